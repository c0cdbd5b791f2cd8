// Package kubeclient holds what every hookline client of the API server (the manager,
// kubectl-hookline) does to its connection.
package kubeclient

import (
	"net/http"

	"k8s.io/client-go/rest"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/jsondepth"
)

// MaxResponseDepth bounds the nesting of what is decoded from the hookline API: far
// above any hookline object's own structure plus payload.MaxDepth, far below the
// 10,000 levels at which Go's JSON decoders give up.
const MaxResponseDepth = 1000

// Guarded is cfg with the hookline API's responses capped at MaxResponseDepth, so
// that an object nested deep enough to be stored but not to be listed (created before
// admission refused it, or while it was off) cannot make a LIST or a watch fail: the
// object is decoded with its payload cut short, and the controllers refuse it.
func Guarded(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return jsondepth.CapResponses(rt, "/apis/"+hooklinev1.GroupVersion.Group+"/", MaxResponseDepth)
	})
	return cfg
}
