{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "patd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "patd.fullname" -}}
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

{{- define "patd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "patd.labels" -}}
helm.sh/chart: {{ include "patd.chart" . }}
{{ include "patd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "patd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "patd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "patd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "patd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "patd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret and key that hold the database URL. */}}
{{- define "patd.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else if .Values.database.url }}
{{- printf "%s-database" (include "patd.fullname" .) }}
{{- else }}
{{- fail "set database.url (a postgres:// URL) or database.existingSecret" }}
{{- end }}
{{- end }}

{{- define "patd.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else }}
{{- "database-url" }}
{{- end }}
{{- end }}

{{/* The container's environment: the database URL from its Secret, never inline. */}}
{{- define "patd.databaseEnv" -}}
- name: PATD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "patd.databaseSecretName" . }}
      key: {{ include "patd.databaseSecretKey" . }}
{{- end }}

{{/* A trusted caller known by its client certificate needs verified client certificates. */}}
{{- define "patd.checkTrustedCallers" -}}
{{- range .Values.trustedCallers }}
{{- if and .clientCertDnsName (not (and $.Values.tls.enabled $.Values.tls.clientAuth)) }}
{{- fail (printf "trustedCallers %s: clientCertDnsName needs tls.enabled and tls.clientAuth" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The port kubelet probes: the plaintext health port when the main one has TLS. */}}
{{- define "patd.probePort" -}}
{{- if .Values.tls.enabled }}{{ .Values.tls.healthPort }}{{ else }}{{ .Values.service.port }}{{ end }}
{{- end }}

{{/*
Pods must outlive their drain: Kubernetes kills at terminationGracePeriodSeconds,
which has to cover the preStop pause plus patd's shutdown grace.
*/}}
{{- define "patd.checkTermination" -}}
{{- $needed := add .Values.preStopSleepSeconds .Values.config.shutdownGraceSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than preStopSleepSeconds + config.shutdownGraceSeconds (%d)" (int .Values.terminationGracePeriodSeconds) (int $needed)) }}
{{- end }}
{{- end }}
