package secrets

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// secretSource is the API server as the cache reads it: values it can change, and a
// count of reads. beforeAnswer runs while a read is in flight.
type secretSource struct {
	mu           sync.Mutex
	values       map[string]string
	reads        atomic.Int32
	beforeAnswer func()
}

func (s *secretSource) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	s.reads.Add(1)
	s.mu.Lock()
	v, ok := s.values[key.Name]
	hook := s.beforeAnswer
	s.mu.Unlock()
	if hook != nil {
		hook()
	}
	if !ok {
		return apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, key.Name)
	}
	*obj.(*corev1.Secret) = corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
		Data: map[string][]byte{"k": []byte(v)}}
	return nil
}

func (s *secretSource) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return nil
}

func (s *secretSource) set(name, v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.values[name] = v
}

func valueOf(t *testing.T, c *UserSecretCache, name string) string {
	t.Helper()
	s, err := c.Get(context.Background(), types.NamespacedName{Namespace: "ns", Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return string(s.Data["k"])
}

func TestUserSecretIsReadOncePerChange(t *testing.T) {
	src := &secretSource{values: map[string]string{"s": "v1"}}
	c := NewUserSecretCache(src)
	for range 3 {
		if v := valueOf(t, c, "s"); v != "v1" {
			t.Fatalf("value %q", v)
		}
	}
	if n := src.reads.Load(); n != 1 {
		t.Fatalf("%d reads for three Gets, want 1", n)
	}
	// A copy: the caller may change it without changing what is held.
	s, _ := c.Get(context.Background(), types.NamespacedName{Namespace: "ns", Name: "s"})
	s.Data["k"] = []byte("scribbled")
	src.set("s", "v2")
	c.Forget(types.NamespacedName{Namespace: "ns", Name: "s"})
	if v := valueOf(t, c, "s"); v != "v2" {
		t.Fatalf("after the change: %q, want v2", v)
	}
	if n := src.reads.Load(); n != 2 {
		t.Fatalf("%d reads, want 2", n)
	}
}

func TestMissingUserSecretIsRememberedUntilItAppears(t *testing.T) {
	src := &secretSource{values: map[string]string{}}
	c := NewUserSecretCache(src)
	key := types.NamespacedName{Namespace: "ns", Name: "later"}
	for range 3 {
		if _, err := c.Get(context.Background(), key); !apierrors.IsNotFound(err) {
			t.Fatalf("got %v, want NotFound", err)
		}
	}
	if n := src.reads.Load(); n != 1 {
		t.Fatalf("%d reads of a missing Secret, want 1", n)
	}
	src.set("later", "here")
	c.Forget(key) // the watch reports its creation
	if v := valueOf(t, c, "later"); v != "here" {
		t.Fatalf("value %q", v)
	}
}

func TestUserSecretReadOvertakenByAChangeIsNotKept(t *testing.T) {
	src := &secretSource{values: map[string]string{"s": "old"}}
	c := NewUserSecretCache(src)
	key := types.NamespacedName{Namespace: "ns", Name: "s"}
	// While the first read is in flight, the Secret changes and the watch says so.
	src.beforeAnswer = func() {
		src.beforeAnswer = nil
		c.Forget(key)
	}
	if v := valueOf(t, c, "s"); v != "old" {
		t.Fatalf("the read in flight answered %q", v)
	}
	src.set("s", "new")
	if v := valueOf(t, c, "s"); v != "new" {
		t.Fatalf("after a change during a read: %q, want new (the stale read must not be kept)", v)
	}
}
