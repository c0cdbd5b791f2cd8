# hookline — build, test and run. Every tool is installed into bin/ at a pinned version.

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMG ?= ghcr.io/hookline/hookline:$(VERSION)

LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen
KUSTOMIZE ?= $(LOCALBIN)/kustomize
CONTROLLER_TOOLS_VERSION ?= v0.23.0
KUSTOMIZE_VERSION ?= v5.7.1
HELM ?= $(LOCALBIN)/helm
HELM_VERSION ?= v3.22.0
# The envtest control plane is built from source (hack/build-envtest.sh) and cached in
# $${XDG_CACHE_HOME:-$$HOME/.cache}/hookline/envtest so that every clone reuses it.
ENVTEST_K8S_VERSION ?= v1.37.2
ENVTEST_ETCD_VERSION ?= v3.6.16

GO_LDFLAGS := -X github.com/hookline/hookline/internal/version.Version=$(VERSION)

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-16s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate CRDs and RBAC from the markers (and copy them into the Helm chart).
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd webhook paths="./..." output:crd:artifacts:config=config/crd/bases
	mkdir -p dist/chart/crds dist/chart/files
	cp config/crd/bases/*.yaml dist/chart/crds/
	cp config/rbac/role.yaml dist/chart/files/manager-role.yaml

.PHONY: generate
generate: controller-gen ## Generate the deepcopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## go fmt.
	go fmt ./...

.PHONY: vet
vet: ## go vet.
	go vet ./...

.PHONY: test
# -race: the manager is concurrent (workers, batching, caches), so every test runs under
# the race detector. -parallel 8: the envtest tests wait on receivers and retries far
# more than they compute, so more of them run at once than there are cores.
test: manifests generate fmt vet envtest kustomize helm postgres ## Run every test against a real API server (envtest), with the race detector.
	KUBEBUILDER_ASSETS="$$(hack/build-envtest.sh)" HOOKLINE_TEST_ENV_REQUIRED=1 go test -race ./... -count=1 -parallel 8 -timeout 20m

.PHONY: unit
# Without a control plane, PostgreSQL or tools: the tests that need one skip and say so.
unit: ## Run only the unit tests (no control plane, no database; seconds).
	HOOKLINE_TEST_UNIT_ONLY=1 go test ./... -count=1

.PHONY: postgres
# The archive's tests start a throwaway PostgreSQL server from Debian's package; it is
# installed when missing (as root, or with sudo).
postgres: ## Install Debian's postgresql package when pg_ctl is missing.
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null; then exit 0; fi; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	echo "installing postgresql (for the archive's tests)"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null

.PHONY: bench
bench: build envtest ## The throughput, latency and cost benchmark (prints a table, writes bin/bench-report.json), then the Go benchmarks.
	KUBEBUILDER_ASSETS="$$(hack/build-envtest.sh)" go run ./test/bench --manager $(LOCALBIN)/manager --report $(LOCALBIN)/bench-report.json \
		--cpuprofile $(LOCALBIN)/bench-manager-cpu.pprof
	@echo "== where the manager spent its CPU during fanout-1 (go tool pprof -top)"
	go tool pprof -top -nodecount=25 $(LOCALBIN)/manager $(LOCALBIN)/bench-manager-cpu.pprof 2>/dev/null | tail -n +6
	go test ./internal/... -run '^$$' -bench . -benchmem

.PHONY: demo
demo: build envtest ## A throwaway control plane, the manager and a receiver: signed deliveries, shown.
	KUBEBUILDER_ASSETS="$$(hack/build-envtest.sh)" go run ./hack/demo --manager $(LOCALBIN)/manager --crds config/crd/bases --samples config/samples

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager and the kubectl plugin into bin/.
	go build -ldflags "$(GO_LDFLAGS)" -o $(LOCALBIN)/manager .
	go build -ldflags "$(GO_LDFLAGS)" -o $(LOCALBIN)/kubectl-hookline ./cmd/kubectl-hookline

.PHONY: run
run: manifests generate fmt vet ## Run the manager against the current kubeconfig.
	go run -ldflags "$(GO_LDFLAGS)" . --allow-insecure-http --allow-private-networks --metrics-secure=false

.PHONY: docker-build
docker-build: ## Build the container image (needs a container engine).
	docker build --build-arg VERSION=$(VERSION) -t $(IMG) .

##@ Deployment

.PHONY: install
install: manifests kustomize ## Install the CRDs into the current kubeconfig's cluster.
	$(KUSTOMIZE) build config/crd | kubectl apply --server-side -f -

.PHONY: uninstall
uninstall: manifests kustomize ## Remove the CRDs (and every hookline object) from the cluster.
	$(KUSTOMIZE) build config/crd | kubectl delete --ignore-not-found -f -

.PHONY: deploy
deploy: manifests kustomize ## Deploy the manager into the current kubeconfig's cluster.
	cd config/manager && $(KUSTOMIZE) edit set image controller=$(IMG)
	$(KUSTOMIZE) build config/default | kubectl apply --server-side -f -

.PHONY: undeploy
undeploy: kustomize ## Remove the manager from the cluster.
	$(KUSTOMIZE) build config/default | kubectl delete --ignore-not-found -f -

##@ Tools

$(LOCALBIN):
	mkdir -p $(LOCALBIN)

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN)-$(CONTROLLER_TOOLS_VERSION) ## controller-gen into bin/.
	@ln -sf $(CONTROLLER_GEN)-$(CONTROLLER_TOOLS_VERSION) $(CONTROLLER_GEN)
$(CONTROLLER_GEN)-$(CONTROLLER_TOOLS_VERSION): | $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(LOCALBIN)/controller-gen $@

.PHONY: kustomize
kustomize: $(KUSTOMIZE)-$(KUSTOMIZE_VERSION) ## kustomize into bin/.
	@ln -sf $(KUSTOMIZE)-$(KUSTOMIZE_VERSION) $(KUSTOMIZE)
$(KUSTOMIZE)-$(KUSTOMIZE_VERSION): | $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	mv $(LOCALBIN)/kustomize $@

.PHONY: helm
helm: $(HELM)-$(HELM_VERSION) ## helm into bin/ (renders dist/chart in the tests).
	@ln -sf $(HELM)-$(HELM_VERSION) $(HELM)
$(HELM)-$(HELM_VERSION): | $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(LOCALBIN)/helm $@

.PHONY: envtest
envtest: ## Build (once, cached) the envtest kube-apiserver and etcd from source.
	K8S_VERSION=$(ENVTEST_K8S_VERSION) ETCD_VERSION=$(ENVTEST_ETCD_VERSION) hack/build-envtest.sh >/dev/null
