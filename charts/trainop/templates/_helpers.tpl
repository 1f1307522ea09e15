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
