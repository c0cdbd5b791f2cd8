package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

// Every spec and status field says what it means, so `kubectl explain --recursive`
// and the CRDs' OpenAPI are a reference of their own.
func TestEveryFieldIsDocumented(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "crd", "bases", "*.yaml"))
	if err != nil || len(files) != 3 {
		t.Fatalf("CRDs: %v %v", files, err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.Unmarshal(raw, &crd); err != nil {
			t.Fatal(err)
		}
		var walk func(path string, s apiextensionsv1.JSONSchemaProps)
		walk = func(path string, s apiextensionsv1.JSONSchemaProps) {
			for name, p := range s.Properties {
				sub := path + "." + name
				if strings.TrimSpace(p.Description) == "" {
					t.Errorf("%s %s has no description", crd.Spec.Names.Kind, sub)
				}
				walk(sub, p)
				if p.Items != nil && p.Items.Schema != nil {
					walk(sub+"[]", *p.Items.Schema)
				}
			}
		}
		root := crd.Spec.Versions[0].Schema.OpenAPIV3Schema
		for _, part := range []string{"spec", "status"} {
			walk(part, root.Properties[part])
		}
	}
}
