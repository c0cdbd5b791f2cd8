package controllers

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// argoHealth runs our Argo CD health check (config/argocd/<kind>.lua) on obj with
// gopher-lua, the interpreter Argo CD itself embeds, and returns hs.status.
func argoHealth(t *testing.T, obj client.Object) string {
	t.Helper()
	kind := strings.ToLower(reflect.TypeOf(obj).Elem().Name())
	script, err := os.ReadFile(filepath.Join("..", "config", "argocd", kind+".lua"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	lua.OpenBase(L)
	lua.OpenString(L)
	lua.OpenTable(L)
	L.SetGlobal("obj", toLua(L, u))
	if err := L.DoString(string(script)); err != nil {
		t.Fatalf("%s.lua: %v", kind, err)
	}
	hs, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("%s.lua returned %s, want a table", kind, L.Get(-1).Type())
	}
	return hs.RawGetString("status").String()
}

func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, val := range x {
			t.RawSetString(k, toLua(L, val))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, val := range x {
			t.Append(toLua(L, val))
		}
		return t
	case string:
		return lua.LString(x)
	case bool:
		return lua.LBool(x)
	case int64:
		return lua.LNumber(x)
	case float64:
		return lua.LNumber(x)
	case nil:
		return lua.LNil
	}
	return lua.LString("")
}
