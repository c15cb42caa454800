{{/* Names and labels shared by every object of a release. */}}
{{- define "openshell.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "openshell.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "openshell.labels" -}}
{{ include "openshell.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "openshell.serviceAccountName" -}}
{{- default (include "openshell.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "openshell.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "openshell.sandboxNamespace" -}}
{{- default .Release.Namespace .Values.driver.namespace -}}
{{- end -}}

{{- define "openshell.pkiSecret" -}}
{{- default (printf "%s-pki" (include "openshell.fullname" .)) .Values.pki.existingSecret -}}
{{- end -}}

{{/* The [drivers.kubernetes] table: computed defaults, then driver.config on top. */}}
{{- /* The gateway's config.toml: the Service's names for its server certificate (a
client or a sandbox reaching it as <service>.<namespace>.svc must find that name in
it), and the Kubernetes driver's table. */ -}}
{{- define "openshell.config" -}}
{{- $svc := include "openshell.fullname" . -}}
{{- $t := dict
  "namespace" (include "openshell.sandboxNamespace" .)
  "supervisor_image" (default (include "openshell.image" .) .Values.driver.supervisorImage)
-}}
{{- if .Values.service.clusterIP -}}
{{- /* The gateway's certificate always names host.openshell.internal; sandbox pods map
that name to the Service's fixed ClusterIP, so no cluster DNS is needed either. */ -}}
{{- $_ := set $t "gateway_endpoint" (default (printf "https://host.openshell.internal:%d" (int .Values.service.port)) .Values.driver.gatewayEndpoint) -}}
{{- $_ := set $t "gateway_host_ip" .Values.service.clusterIP -}}
{{- else -}}
{{- $_ := set $t "gateway_endpoint" (default (printf "https://%s.%s.svc:%d" $svc .Release.Namespace (int .Values.service.port)) .Values.driver.gatewayEndpoint) -}}
{{- end -}}
{{- $hosts := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) -}}
{{- if .Values.service.clusterIP -}}
{{- $hosts = append $hosts .Values.service.clusterIP -}}
{{- end -}}
{{- toToml (dict "tls_hosts" $hosts "drivers" (dict "kubernetes" (mergeOverwrite $t (deepCopy .Values.driver.config)))) -}}
{{- end -}}

{{/* Refuse values that cannot work, naming the key and the fix. */}}
{{- define "openshell.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.database.existingSecret) -}}
{{- fail (printf "replicas: %d needs a shared PostgreSQL store: set database.existingSecret to a Secret holding the DSN (the embedded SQLite database serves one replica)" (int .Values.replicas)) -}}
{{- end -}}
{{- if lt (int .Values.replicas) 1 -}}
{{- fail "replicas must be at least 1" -}}
{{- end -}}
{{- end -}}
