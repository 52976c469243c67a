# atrest's image: the static atrest binary, the CA certificates it verifies
# Git, Vault, etcd and the Kubernetes API with, and an unprivileged user
# (65532, as the chart's pod security context runs it). Nothing else: no
# shell, no package manager. `make image` builds it from bin/atrest; the
# chart's default image is its name and tag.
#
# The KMS plugin container atrest starts on every controlplane node
# (provider vault-transit) runs this image as root: its socket and Vault
# credential are in root-owned directories of the node.
FROM scratch
COPY passwd /etc/passwd
COPY group /etc/group
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY atrest /usr/local/bin/atrest
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/atrest"]
