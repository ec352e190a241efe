// Build module for helm, the client the e2e suite installs the operator chart with. Pinned to the
// helm release whose Kubernetes client libraries match the control plane's minor version
// (../go.mod); kept as its own module so helm's dependency versions never move the control
// plane's build.
module octavo.dev/e2e/controlplane/helm

go 1.24.0

require helm.sh/helm/v3 v3.19.5
