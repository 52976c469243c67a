{{/* Names and labels. */}}
{{- define "atrest.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "atrest.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "atrest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atrest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "atrest.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "atrest.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "atrest.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "atrest.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "atrest.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The canary secret atrest writes through each node's kube-apiserver
(controlplane.CanaryNamespace and CanaryName).
*/}}
{{- define "atrest.canaryNamespace" -}}kube-system{{- end }}
{{- define "atrest.canaryName" -}}atrest-canary{{- end }}

{{/*
Where the daemon finds things in its container. The settings file names
these paths; the Deployment mounts them.
*/}}
{{- define "atrest.settingsDir" -}}/etc/atrest{{- end }}
{{- define "atrest.snapshotsDir" -}}/var/lib/atrest/snapshots{{- end }}
{{- define "atrest.gitCacheDir" -}}/var/cache/atrest/git{{- end }}

{{/*
atrest.gitTransport: "ssh", "https", "http", "file" or "" for
.Values.git.url, as settings.GitTransport classifies it (scp-like
git@host:path is ssh).
*/}}
{{- define "atrest.gitTransport" -}}
{{- $url := .Values.git.url }}
{{- if contains "://" $url }}
{{- $scheme := regexReplaceAll "://.*$" $url "" }}
{{- if has $scheme (list "ssh" "git+ssh") }}ssh
{{- else if has $scheme (list "https" "http" "file") }}{{ $scheme }}
{{- end }}
{{- else if regexMatch "^[^/]+:" $url }}ssh
{{- else if or (hasPrefix "/" $url) (hasPrefix "." $url) }}file
{{- end }}
{{- end }}

{{/*
atrest.validate fails the install or upgrade with every missing or
contradictory value at once, each naming the value and how to set it.
`helm lint` renders with neither IsInstall nor IsUpgrade, so the chart's
defaults (which cannot name your Git repository, Vault or etcd) lint clean
while an install with them is refused instead of starting a pod that can
only crash.
*/}}
{{- define "atrest.validate" -}}
{{- if or .Release.IsInstall .Release.IsUpgrade }}
{{- $v := .Values }}
{{- $errs := list }}
{{- if not $v.clusterName }}
{{- $errs = append $errs "clusterName: required: the cluster this release manages, as its cluster.yml's cluster_name names it (\"local\" when it has none); it names the cluster's keyring in Vault, and atrest refuses a cluster.yml of another cluster" }}
{{- end }}
{{- if not $v.git.url }}
{{- $errs = append $errs "git.url: required: the Git repository holding cluster.yml (ssh://, git@host:path or https://)" }}
{{- else if and (eq (include "atrest.gitTransport" .) "ssh") (not $v.git.ssh.existingSecret) }}
{{- $errs = append $errs (printf "git.ssh.existingSecret: required for Git over SSH (%s): a Secret with the private key (%s) and the server's known_hosts (%s)" $v.git.url $v.git.ssh.privateKeyKey $v.git.ssh.knownHostsKey) }}
{{- else if not (has (include "atrest.gitTransport" .) (list "ssh" "https" "http")) }}
{{- $errs = append $errs (printf "git.url: %q is not a Git URL atrest can fetch from a pod: use ssh://, git@host:path or https://" $v.git.url) }}
{{- end }}
{{- if not $v.vault.address }}
{{- $errs = append $errs "vault.address: required: where Vault listens (https://vault.example.com:8200)" }}
{{- end }}
{{- if and (hasPrefix "http://" (lower $v.vault.address)) (not $v.vault.insecureAllowHTTP) }}
{{- $errs = append $errs (printf "vault.address: %q is plain http: the Vault token and every key would cross the network unencrypted; use https:// (with vault.ca for a private CA) or, DANGEROUS, set vault.insecureAllowHTTP" $v.vault.address) }}
{{- end }}
{{- if $v.kms.enabled }}
{{- $kmsVault := default $v.vault.address $v.kms.vaultAddress }}
{{- if and (hasPrefix "http://" (lower $kmsVault)) (not $v.kms.vaultInsecureAllowHTTP) }}
{{- $errs = append $errs (printf "kms.vaultAddress: %q is plain http: the plugins' data keys and token would cross the network unencrypted; use https:// (with kms.vaultCAFile, a CA bundle on the nodes) or, DANGEROUS, set kms.vaultInsecureAllowHTTP" $kmsVault) }}
{{- end }}
{{- end }}
{{- if and (eq $v.vault.authMethod "kubernetes") (not $v.vault.kubernetes.role) }}
{{- $errs = append $errs "vault.kubernetes.role: required for authMethod kubernetes: the Vault role bound to this chart's service account" }}
{{- end }}
{{- if and (eq $v.vault.authMethod "kubernetes") (not $v.vault.kubernetes.audience) }}
{{- $errs = append $errs "vault.kubernetes.audience: required for authMethod kubernetes: the audience of the token atrest logs in to Vault with (the Vault role's audience, default vault); the pod's own API token is never sent to Vault" }}
{{- end }}
{{- if $v.networkPolicy.enabled }}
{{- range $name := list "git" "vault" "etcd" "ssh" "kubernetes" }}
{{- if not (index $v.networkPolicy.egress $name).cidrs }}
{{- $errs = append $errs (printf "networkPolicy.egress.%s.cidrs: required with networkPolicy.enabled: the addresses of %s, or atrest cannot reach them" $name (get (dict "git" "the Git server" "vault" "Vault" "etcd" "every etcd member" "ssh" "every controlplane node (SSH)" "kubernetes" "the kube-apiservers") $name)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq $v.vault.authMethod "approle" }}
{{- if not $v.vault.approle.roleID }}
{{- $errs = append $errs "vault.approle.roleID: required for authMethod approle" }}
{{- end }}
{{- if not $v.vault.approle.existingSecret }}
{{- $errs = append $errs "vault.approle.existingSecret: required for authMethod approle: a Secret with the secret id" }}
{{- end }}
{{- end }}
{{- if and (eq $v.vault.authMethod "token") (not $v.vault.token.existingSecret) }}
{{- $errs = append $errs "vault.token.existingSecret: required for authMethod token: a Secret with the Vault token" }}
{{- end }}
{{- if not $v.etcd.endpoints }}
{{- $errs = append $errs "etcd.endpoints: required: the etcd client URLs (https://10.0.0.1:2379, one per member)" }}
{{- end }}
{{- range $v.etcd.endpoints }}
{{- if and (hasPrefix "http://" (lower .)) (not $v.etcd.insecureAllowHTTP) }}
{{- $errs = append $errs (printf "etcd.endpoints: %q is plaintext: snapshots and every object read from etcd would cross the network unencrypted; use https:// or, DANGEROUS, set etcd.insecureAllowHTTP" .) }}
{{- end }}
{{- end }}
{{- if not $v.etcd.existingSecret }}
{{- $errs = append $errs (printf "etcd.existingSecret: required: a Secret with etcd's CA (%s) and a client certificate (%s, %s)" $v.etcd.caKey $v.etcd.certKey $v.etcd.keyKey) }}
{{- end }}
{{- if not $v.ssh.existingSecret }}
{{- $errs = append $errs (printf "ssh.existingSecret: required: a Secret with the SSH private key for the nodes (%s) and their known_hosts (%s)" $v.ssh.privateKeyKey $v.ssh.knownHostsKey) }}
{{- end }}
{{- if and $v.webhook.enabled (not $v.webhook.existingSecret) }}
{{- $errs = append $errs "webhook.existingSecret: required with webhook.enabled: a Secret with the webhook's HMAC secret" }}
{{- end }}
{{- $p := $v.snapshots.persistence }}
{{- if and (gt (int $v.replicaCount) 1) (not $p.existingClaim) (not (has "ReadWriteMany" $p.accessModes)) }}
{{- $errs = append $errs (printf "snapshots.persistence.accessModes: replicaCount %d needs ReadWriteMany (or an existingClaim that allows it): the replicas share the snapshots" (int $v.replicaCount)) }}
{{- end }}
{{- if $errs }}
{{- fail (printf "\n\natrest: the values are incomplete; nothing was installed:\n  %s\n" (join "\n  " $errs)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
atrest.settings is atrest's settings file (see settings/settings.go): every
file it names is one the Deployment mounts.
*/}}
{{- define "atrest.settings" -}}
{{- $v := .Values }}
{{- $d := include "atrest.settingsDir" . }}
{{- $git := dict "url" $v.git.url "ref" $v.git.ref "path" $v.git.path "interval" $v.git.interval "timeout" $v.git.timeout "cacheDir" (include "atrest.gitCacheDir" .) }}
{{- if $v.git.ssh.existingSecret }}
{{- $_ := set $git "sshKeyFile" (printf "%s/git-ssh/identity" $d) }}
{{- $_ := set $git "knownHostsFile" (printf "%s/git-ssh/known_hosts" $d) }}
{{- end }}
{{- if $v.git.https.existingSecret }}
{{- if $v.git.https.bearerTokenKey }}
{{- $_ := set $git "bearerTokenFile" (printf "%s/git-https/token" $d) }}
{{- else }}
{{- $_ := set $git "passwordFile" (printf "%s/git-https/password" $d) }}
{{- end }}
{{- end }}
{{- if $v.git.ca.existingSecret }}
{{- $_ := set $git "caFile" (printf "%s/git-ca/ca.crt" $d) }}
{{- end }}
{{- if $v.git.verify.allowedSigners.existingSecret }}
{{- $_ := set $git "allowedSignersFile" (printf "%s/git-allowed-signers/allowed_signers" $d) }}
{{- end }}
{{- if $v.git.allowRevision }}
{{- $_ := set $git "allowRevision" $v.git.allowRevision }}
{{- end }}
{{- if $v.git.verify.openPGPKeyring.existingSecret }}
{{- $_ := set $git "openPGPKeyringFile" (printf "%s/git-openpgp/keyring.asc" $d) }}
{{- end }}
{{- $vault := dict "address" $v.vault.address "authMethod" $v.vault.authMethod "kvMount" $v.vault.kvMount "prefix" $v.vault.prefix }}
{{- if $v.vault.namespace }}
{{- $_ := set $vault "namespace" $v.vault.namespace }}
{{- end }}
{{- if $v.vault.insecureAllowHTTP }}
{{- $_ := set $vault "insecureAllowHTTP" true }}
{{- end }}
{{- if $v.vault.insecureSkipTLSVerify }}
{{- $_ := set $vault "insecureSkipTLSVerify" true }}
{{- end }}
{{- if $v.vault.ca.existingSecret }}
{{- $_ := set $vault "caFile" (printf "%s/vault-ca/ca.crt" $d) }}
{{- end }}
{{- if $v.vault.clientCertificate.existingSecret }}
{{- $_ := set $vault "clientCertFile" (printf "%s/vault-client/tls.crt" $d) }}
{{- $_ := set $vault "clientKeyFile" (printf "%s/vault-client/tls.key" $d) }}
{{- end }}
{{- if eq $v.vault.authMethod "kubernetes" }}
{{- $_ := set $vault "kubernetesMount" $v.vault.kubernetes.mount }}
{{- $_ := set $vault "kubernetesRole" $v.vault.kubernetes.role }}
{{- $_ := set $vault "kubernetesTokenFile" (printf "%s/vault-token/token" $d) }}
{{- else if eq $v.vault.authMethod "approle" }}
{{- $_ := set $vault "approleMount" $v.vault.approle.mount }}
{{- $_ := set $vault "approleRoleID" $v.vault.approle.roleID }}
{{- $_ := set $vault "approleSecretIDFile" (printf "%s/vault-approle/secret-id" $d) }}
{{- $_ := set $vault "approleWrapped" $v.vault.approle.wrapped }}
{{- else if eq $v.vault.authMethod "token" }}
{{- $_ := set $vault "tokenFile" (printf "%s/vault-token/token" $d) }}
{{- end }}
{{- $etcd := dict "endpoints" $v.etcd.endpoints "caFile" (printf "%s/etcd/ca.crt" $d) "certFile" (printf "%s/etcd/tls.crt" $d) "keyFile" (printf "%s/etcd/tls.key" $d) }}
{{- if $v.etcd.insecureAllowHTTP }}
{{- $_ := set $etcd "insecureAllowHTTP" true }}
{{- end }}
{{- $ssh := dict "keyFile" (printf "%s/ssh/identity" $d) "knownHostsFile" (printf "%s/ssh/known_hosts" $d) "timeout" $v.ssh.timeout }}
{{- $kms := dict }}
{{- if $v.kms.enabled }}
{{- $kms = dict "image" (default (include "atrest.image" .) $v.kms.image) "transitMount" $v.kms.transitMount "approleMount" $v.kms.approleMount "awaitTimeout" $v.kms.awaitTimeout }}
{{- if $v.kms.transitKeyName }}
{{- $_ := set $kms "transitKey" $v.kms.transitKeyName }}
{{- end }}
{{- range $k := list "approleRole" "vaultAddress" "vaultCAFile" }}
{{- if index $v.kms $k }}
{{- $_ := set $kms $k (index $v.kms $k) }}
{{- end }}
{{- end }}
{{- if $v.kms.vaultInsecureAllowHTTP }}
{{- $_ := set $kms "vaultInsecureAllowHTTP" true }}
{{- end }}
{{- end }}
{{- $listen := dict "metrics" (printf "0.0.0.0:%d" (int $v.metrics.port)) }}
{{- if $v.webhook.enabled }}
{{- $_ := set $listen "webhook" (printf "0.0.0.0:%d" (int $v.webhook.port)) }}
{{- $_ := set $listen "webhookSecretFile" (printf "%s/webhook/secret" $d) }}
{{- end }}
{{- $settings := dict
  "cluster" (dict "name" $v.clusterName)
  "git" $git
  "vault" $vault
  "etcd" $etcd
  "kubernetes" (dict "inCluster" true "qps" $v.kubernetes.qps "burst" $v.kubernetes.burst "rewriteWorkers" $v.kubernetes.rewriteWorkers "events" $v.events.enabled)
  "ssh" $ssh
  "snapshots" (dict "dir" (include "atrest.snapshotsDir" .) "drillInterval" $v.snapshots.drillInterval)
  "kms" $kms
  "listen" $listen
  "daemon" (dict "suspend" $v.daemon.suspend "maxBackoff" $v.daemon.maxBackoff "liveCensus" $v.daemon.liveCensus "censusCrossCheck" $v.daemon.censusCrossCheck)
  "policy" (dict "minRotationInterval" $v.policy.minRotationInterval "minSnapshotRetention" $v.policy.minSnapshotRetention "allowDisable" $v.policy.allowDisable "allowCustomConfig" $v.policy.allowCustomConfig "allowKMS" $v.policy.allowKMS)
  "log" (dict "format" $v.log.format "level" $v.log.level)
}}
{{- toYaml $settings }}
{{- end }}

{{- /*
The seconds in a duration such as 90s, 30m or 1h30m (values.schema.json's
promDuration), for alert thresholds: PromQL compares numbers.
*/}}
{{- define "atrest.seconds" -}}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+[hms]" . -1 }}
{{- $n := int (trimSuffix "h" (trimSuffix "m" (trimSuffix "s" .))) }}
{{- $total = add $total (mul $n (get (dict "h" 3600 "m" 60 "s" 1) (substr (sub (len .) 1 | int) (len .) .))) }}
{{- end }}
{{- $total }}
{{- end }}
