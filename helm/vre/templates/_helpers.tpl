{{/* Names, labels and derived values shared by the templates. */}}

{{- define "vre.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name prefix; kept short: suffixes such as "-postgresql" must fit in 63 characters. */}}
{{- define "vre.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vre.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "vre.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "vre.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vre.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vre.secretName" -}}{{ include "vre.fullname" . }}-secrets{{- end -}}
{{- define "vre.stateClaim" -}}{{ .Values.hub.state.existingClaim | default (printf "%s-hub-state" (include "vre.fullname" .)) }}{{- end -}}
{{- define "vre.serviceAccount" -}}{{ include "vre.fullname" . }}-hub{{- end -}}

{{/* Every image a project namespace may run: the session images, then the allow-list. */}}
{{- define "vre.allowedImages" -}}
{{- $images := list .Values.sessions.image -}}
{{- if .Values.sessions.gpuImage }}{{ $images = append $images .Values.sessions.gpuImage }}{{ end -}}
{{- range .Values.sessions.imageAllowList }}{{ $images = append $images . }}{{ end -}}
{{- $images | uniq | toJson -}}
{{- end -}}

{{/* Label the hub puts on its project namespaces and session pods (vre.backends.kubernetes), with
hub.instance as its value. */}}
{{- define "vre.projectLabel" -}}vre.instance{{- end -}}

{{/* The database URLs' Secret and keys, by database.type. */}}
{{- define "vre.dbSecret" -}}
{{- if eq .Values.database.type "external" -}}
{{- required "database.type is external: set database.external.existingSecret to a Secret holding the two database URLs (or choose database.type internal or sqlite)" .Values.database.external.existingSecret -}}
{{- else -}}
{{- include "vre.secretName" . -}}
{{- end -}}
{{- end -}}

{{/* Where people reach the VRE (VRE public_url): hub.publicUrl, else the Ingress's host. */}}
{{- define "vre.publicUrl" -}}
{{- if .Values.hub.publicUrl -}}
{{- .Values.hub.publicUrl -}}
{{- else if .Values.ingress.enabled -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host -}}
{{- end -}}
{{- end -}}

{{/* The OIDC login's VRE settings (VRE_OIDC_*), from auth.oidc. */}}
{{- define "vre.oidcEnv" -}}
{{- $o := .Values.auth.oidc -}}
{{- $env := dict "ISSUER" $o.issuer "CLIENT_ID" $o.clientId "LOGIN_SERVICE" $o.loginService "SCOPES" $o.scopes
    "USERNAME_CLAIM" $o.usernameClaim "GROUPS_CLAIM" $o.groupsClaim "ENTITLEMENT_NAMESPACE" $o.entitlementNamespace
    "ADMIN_GROUP" $o.adminGroup "AUDITOR_GROUP" $o.auditorGroup "CHECKER_GROUP" $o.checkerGroup
    "PROJECT_GROUP_PREFIX" $o.projectGroupPrefix "REQUIRED_GROUP" $o.requiredGroup
    "REQUIRE_MFA" $o.requireMfa "MFA_ACR" $o.mfaAcr "MFA_AMR" $o.mfaAmr -}}
{{- range $name := keys $env | sortAlpha }}
- name: VRE_OIDC_{{ $name }}
  value: {{ get $env $name | toString | quote }}
{{- end }}
{{- end -}}
