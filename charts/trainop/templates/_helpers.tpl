{{/* Chart name, or nameOverride. */}}
{{- define "trainop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's resource name. Kept within 63 characters (DNS label); a release
already named after the chart is not repeated ("trainop", not "trainop-trainop").
*/}}
{{- define "trainop.fullname" -}}
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

{{- define "trainop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release (app.kubernetes.io/* recommended labels). */}}
{{- define "trainop.labels" -}}
helm.sh/chart: {{ include "trainop.chart" . }}
{{ include "trainop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: trainop
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The operator pods' selector: immutable in a Deployment, so only stable labels. */}}
{{- define "trainop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trainop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "trainop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trainop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "trainop.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The sidecar image the operator puts into worker pods: the same image unless overridden. */}}
{{- define "trainop.exporterImage" -}}
{{- .Values.operator.exporterImage | default (include "trainop.image" .) }}
{{- end }}

{{/* Namespaced mode when watchNamespaces lists any namespace; cluster-wide otherwise. */}}
{{- define "trainop.namespaced" -}}
{{- if .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
The monitoring.coreos.com objects need the Prometheus Operator's CRDs. Without
them `helm install` would fail late with "no matches for kind", or a GitOps
tool would sync objects nobody reads; fail early and say what to do instead.
Call with (dict "kind" "ServiceMonitor" "value" "monitoring.serviceMonitor.enabled" "root" $).
*/}}
{{- define "trainop.requireMonitoringAPI" -}}
{{- if not (or .root.Values.monitoring.force (.root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}
{{- fail (printf "%s=true needs the Prometheus Operator CRDs (monitoring.coreos.com/v1 %s), which this cluster does not serve. Install the Prometheus Operator (e.g. kube-prometheus-stack) first, set %s=false, or set monitoring.force=true to render it anyway (helm template, GitOps)." .value .kind .value) }}
{{- end }}
{{- end }}

{{- define "trainop.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "trainop.fullname" .) }}
{{- end }}

{{/* Leader election is required for more than one replica. */}}
{{- define "trainop.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without it every replica would reconcile the same TrainingJobs." }}
{{- end }}
{{- end }}

{{/* security.podSecurityNamespaces as the operator reads it: ns=level,ns=level (sorted). */}}
{{- define "trainop.levels" -}}
{{- $items := list }}
{{- range $ns, $level := . }}
{{- $items = append $items (printf "%s=%s" $ns $level) }}
{{- end }}
{{- join "," $items }}
{{- end }}

{{/* The Pod Security Standard's lists, as CEL list literals (core/podsecurity.py has the same). */}}
{{- define "trainop.baselineCapabilities" -}}
['AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD', 'NET_BIND_SERVICE', 'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT']
{{- end }}
{{- define "trainop.safeSysctls" -}}
['kernel.shm_rmid_forced', 'net.ipv4.ip_local_port_range', 'net.ipv4.ip_unprivileged_port_start', 'net.ipv4.tcp_syncookies', 'net.ipv4.ping_group_range', 'net.ipv4.ip_local_reserved_ports', 'net.ipv4.tcp_keepalive_time', 'net.ipv4.tcp_fin_timeout', 'net.ipv4.tcp_keepalive_intvl', 'net.ipv4.tcp_keepalive_probes']
{{- end }}

{{/* CEL: a securityContext (the argument) breaks none of the controls pods and containers share. */}}
{{- define "trainop.baselineContext" -}}
{{- $s := . -}}
((!has({{ $s }}.seccompProfile) || {{ $s }}.seccompProfile.type != 'Unconfined') && (!has({{ $s }}.appArmorProfile) || {{ $s }}.appArmorProfile.type != 'Unconfined') && (!has({{ $s }}.seLinuxOptions) || ((!has({{ $s }}.seLinuxOptions.type) || {{ $s }}.seLinuxOptions.type in ['container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t']) && !has({{ $s }}.seLinuxOptions.user) && !has({{ $s }}.seLinuxOptions.role))) && (!has({{ $s }}.windowsOptions) || !has({{ $s }}.windowsOptions.hostProcess) || !{{ $s }}.windowsOptions.hostProcess))
{{- end }}
