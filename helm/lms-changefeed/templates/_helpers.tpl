{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "lms-changefeed.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, unless the release already says it. */}}
{{- define "lms-changefeed.fullname" -}}
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

{{- define "lms-changefeed.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lms-changefeed.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lms-changefeed.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lms-changefeed.labels" -}}
helm.sh/chart: {{ include "lms-changefeed.chart" . }}
{{ include "lms-changefeed.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lms-changefeed.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lms-changefeed.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the env vars read from: the user's, or the chart's own. */}}
{{- define "lms-changefeed.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "lms-changefeed.fullname" .) }}
{{- end }}

{{- define "lms-changefeed.port" -}}
{{- $http := .Values.config.http | default dict }}
{{- $http.port | default 9102 | int }}
{{- end }}

{{/* "true" when the daemon runs its webhook listener (config.webhook.enabled). */}}
{{- define "lms-changefeed.webhookEnabled" -}}
{{- $webhook := .Values.config.webhook | default dict }}
{{- if $webhook.enabled }}true{{ end }}
{{- end }}

{{/* The webhook listener's port, with the daemon's default. */}}
{{- define "lms-changefeed.webhookPort" -}}
{{- $webhook := .Values.config.webhook | default dict }}
{{- $webhook.port | default 9103 | int }}
{{- end }}

{{/* The path Bindbee posts to, with the daemon's default. */}}
{{- define "lms-changefeed.webhookPath" -}}
{{- $webhook := .Values.config.webhook | default dict }}
{{- $webhook.path | default "/webhooks/bindbee" }}
{{- end }}

{{/* "true" when the connectors come (also) from Bindbee's connectors list. */}}
{{- define "lms-changefeed.discovery" -}}
{{- $bindbee := .Values.config.bindbee | default dict }}
{{- if $bindbee.discover_connectors }}true{{ end }}
{{- end }}

{{/*
The connectors as the daemon will see them: each with a token_env, defaulted to
BINDBEE_TOKEN_<NAME> (upper-cased, anything but A-Z and 0-9 turned into "_").
Rendered as YAML; callers use `include ... | fromYamlArray`.
*/}}
{{- define "lms-changefeed.connectors" -}}
{{- $out := list }}
{{- range $connector := (.Values.config.connectors | default list) }}
{{- $c := deepCopy $connector }}
{{- if not $c.token_env }}
{{- $_ := set $c "token_env" (printf "BINDBEE_TOKEN_%s" (regexReplaceAll "[^A-Z0-9]" (upper (toString $c.name)) "_")) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
"true" when the state is in PostgreSQL: state.urlSecret names the Secret holding the URL.
Then the replicas share the streams through leases; otherwise SQLite, one pod.
*/}}
{{- define "lms-changefeed.postgres" -}}
{{- $state := .Values.state | default dict }}
{{- $secret := $state.urlSecret | default dict }}
{{- if $secret.name }}true{{ end }}
{{- end }}

{{/*
The config file: .Values.config with token_env filled in and the state section: the
tuning from config.state, plus (SQLite) the file on the volume. With PostgreSQL the URL
arrives as CHANGEFEED_STATE__URL from the Secret, never through this file.
*/}}
{{- define "lms-changefeed.configFile" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $_ := set $config "connectors" (include "lms-changefeed.connectors" . | fromYamlArray) }}
{{- $state := deepCopy ($config.state | default dict) }}
{{- if not (include "lms-changefeed.postgres" .) }}
{{- $_ := set $state "path" "/data/changefeed.db" }}
{{- end }}
{{- if $state }}
{{- $_ := set $config "state" $state }}
{{- else }}
{{- $_ := unset $config "state" }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Refuse values that would give a pod that cannot start, naming the value to fix. */}}
{{- define "lms-changefeed.validate" -}}
{{- /* The schema refuses this too; this message also reaches --skip-schema-validation. */}}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "lms-changefeed.postgres" .)) }}
{{- fail (printf "replicaCount %d needs the state in PostgreSQL: set state.urlSecret (name and key of an existing Secret holding the postgresql:// URL); with SQLite the chart runs exactly one pod" (int .Values.replicaCount)) }}
{{- end }}
{{- $connectors := include "lms-changefeed.connectors" . | fromYamlArray }}
{{- $names := list }}
{{- $envs := list }}
{{- range $connectors }}
{{- if has .name $names }}
{{- fail (printf "config.connectors: connector %q is listed twice" .name) }}
{{- end }}
{{- if has .token_env $envs }}
{{- fail (printf "config.connectors: two connectors read their token from %s; set token_env on one of them" .token_env) }}
{{- end }}
{{- $names = append $names .name }}
{{- $envs = append $envs .token_env }}
{{- end }}
{{- $webhook := include "lms-changefeed.webhookEnabled" . }}
{{- $exposed := or .Values.webhook.service.enabled .Values.webhook.ingress.enabled }}
{{- if and $exposed (not $webhook) }}
{{- fail "webhook.service / webhook.ingress expose the webhook listener: set config.webhook.enabled too" }}
{{- end }}
{{- if $webhook }}
{{- $http := .Values.config.http | default dict }}
{{- if and (ne $http.enabled false) (eq (include "lms-changefeed.port" .) (include "lms-changefeed.webhookPort" .)) }}
{{- fail (printf "config.webhook.port: must differ from config.http.port (%s): the webhook listener faces the internet, /metrics must not" (include "lms-changefeed.port" .)) }}
{{- end }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- $tokens := .Values.secrets.connectorTokens | default dict }}
{{- range $name, $_ := $tokens }}
{{- if not (has $name $names) }}
{{- fail (printf "secrets.connectorTokens.%s: no connector of that name under config.connectors" $name) }}
{{- end }}
{{- end }}
{{- if or $connectors (include "lms-changefeed.discovery" .) }}
{{- if not .Values.secrets.apiKey }}
{{- fail "secrets.apiKey is required (or set secrets.existingSecret)" }}
{{- end }}
{{- end }}
{{- range $connectors }}
{{- if not (get $tokens .name) }}
{{- fail (printf "secrets.connectorTokens.%s is required (or set secrets.existingSecret)" .name) }}
{{- end }}
{{- end }}
{{- if and $webhook (not .Values.secrets.webhookSecret) }}
{{- fail "secrets.webhookSecret is required with config.webhook.enabled (or set secrets.existingSecret)" }}
{{- end }}
{{- end }}
{{- end }}
