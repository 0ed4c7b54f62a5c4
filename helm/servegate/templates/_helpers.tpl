{{/*
The chart name, or nameOverride.
*/}}
{{- define "servegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, else <release>-<name>, or just <release> when the release
name already contains the chart name. Truncated to 63 characters (DNS label).
*/}}
{{- define "servegate.fullname" -}}
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

{{/*
The operator's objects: <fullname>-operator.
*/}}
{{- define "servegate.operatorName" -}}
{{- printf "%s-operator" (include "servegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
chart label: name-version.
*/}}
{{- define "servegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the operator's pods (never change them: Deployment selectors are immutable).
*/}}
{{- define "servegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "servegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels of every object the chart installs, without the component.
*/}}
{{- define "servegate.commonLabels" -}}
helm.sh/chart: {{ include "servegate.chart" . }}
app.kubernetes.io/name: {{ include "servegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: servegate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels of the operator's objects.
*/}}
{{- define "servegate.labels" -}}
{{ include "servegate.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels of the chart's objects about the gateways (NetworkPolicy, ServiceMonitor).
*/}}
{{- define "servegate.gatewayLabels" -}}
{{ include "servegate.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/*
The labels the operator puts on every gateway pod and Service it creates (fixed in
servegate_operator.render.labels.gateway_selector, whatever nameOverride says).
*/}}
{{- define "servegate.gatewaySelector" -}}
app.kubernetes.io/name: servegate
app.kubernetes.io/component: gateway
{{- end }}

{{/*
The operator's image: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "servegate.image" -}}
{{- $image := .Values.operator.image }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}

{{/*
The gateway's image: each part defaults to the operator's (one image, two roles).
*/}}
{{- define "servegate.gatewayImage" -}}
{{- $operator := .Values.operator.image }}
{{- $gateway := .Values.gateway.image }}
{{- $repository := default $operator.repository $gateway.repository }}
{{- $tag := default (default .Chart.AppVersion $operator.tag) $gateway.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "servegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "servegate.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The ClusterRole every gateway's ServiceAccount is bound to with `gateway.auth: kubernetes`
(create TokenReviews and SubjectAccessReviews). Not truncated: a ClusterRole name may be
253 characters, and truncating could make it the operator's own ClusterRole name.
*/}}
{{- define "servegate.reviewerRoleName" -}}
{{- printf "%s-gateway-reviews" (include "servegate.fullname" .) }}
{{- end }}

{{/*
gateway.controlPlane: the ClusterRole each gateway's ServiceAccount is bound to, in its
own namespace, by the operator's RoleBinding (the writes of `--control-plane kubernetes`).
Not truncated, like the reviewer role's name.
*/}}
{{- define "servegate.controlPlaneRoleName" -}}
{{- printf "%s-gateway-control-plane" (include "servegate.fullname" .) }}
{{- end }}

{{/*
The name of that RoleBinding in each gateway namespace
(servegate_operator.naming.CONTROL_PLANE_BINDING_NAME).
*/}}
{{- define "servegate.controlPlaneBindingName" -}}
servegate-gateway-control-plane
{{- end }}

{{/*
The name the operator gives the ClusterRoleBinding of namespace NS's gateway
(servegate_operator.naming.review_binding_name; a namespace name is at most 63
characters, so the name is never shortened). Called with (list $ NS).
*/}}
{{- define "servegate.reviewBindingName" -}}
{{- printf "servegate-gateway-reviews-%s" (index . 1) }}
{{- end }}

{{/*
The kopf peering object's name (the operator's --peering flag).
*/}}
{{- define "servegate.peeringName" -}}
{{- include "servegate.fullname" . }}
{{- end }}

{{/*
The namespaces whose gateway pods get an ingress NetworkPolicy.
*/}}
{{- define "servegate.networkPolicyNamespaces" -}}
{{- $namespaces := .Values.networkPolicy.gateway.namespaces }}
{{- if not $namespaces }}
{{- $namespaces = .Values.watchNamespaces }}
{{- end }}
{{- toJson $namespaces }}
{{- end }}

{{/*
Checks the schema cannot express (relations between values); they fail the install with
the reason. Included once, from the operator's Deployment.
*/}}
{{- define "servegate.validate" -}}
{{- $operator := .Values.operator }}
{{- $gateway := .Values.gateway }}
{{- if and (gt (int $operator.replicas) 1) (not $operator.peering.enabled) }}
{{- fail (printf "operator.replicas=%d needs operator.peering.enabled: without peering every replica would reconcile at once; with it one works and the others stand by" (int $operator.replicas)) }}
{{- end }}
{{- if and $gateway.hpa.enabled (le (int $gateway.hpa.maxReplicas) (int $gateway.replicas)) }}
{{- fail (printf "gateway.hpa.maxReplicas (%d) must be greater than gateway.replicas (%d), the HPA's minimum" (int $gateway.hpa.maxReplicas) (int $gateway.replicas)) }}
{{- end }}
{{- if and (ge (int $gateway.replicas) 2) (ge (int $gateway.pdb.minAvailable) (int $gateway.replicas)) }}
{{- fail (printf "gateway.pdb.minAvailable (%d) must be lower than gateway.replicas (%d), or the gateway's PodDisruptionBudget blocks every node drain" (int $gateway.pdb.minAvailable) (int $gateway.replicas)) }}
{{- end }}
{{- if and $gateway.controlPlane (ne $gateway.auth "kubernetes") }}
{{- fail (printf "gateway.controlPlane needs gateway.auth kubernetes (it is %q): the gateway authorizes each REST API write with a SubjectAccessReview of the caller and writes through the API server with its ServiceAccount" $gateway.auth) }}
{{- end }}
{{- $envNames := dict }}
{{- range $i, $var := $gateway.env }}
{{- if hasPrefix "SERVEGATE_" $var.name }}
{{- fail (printf "gateway.env[%d] %s: names starting with SERVEGATE_ are the gateway's own settings, which come from their typed values (gateway.records.dsnSecret for SERVEGATE_RECORDS_DSN, gateway.caBundle for SERVEGATE_CA_BUNDLE, gateway.redisUrl, ...)" $i $var.name) }}
{{- end }}
{{- if has $var.name (list "HOME" "PYTHONUNBUFFERED") }}
{{- fail (printf "gateway.env[%d] %s: set by the operator in every gateway container" $i $var.name) }}
{{- end }}
{{- if hasKey $envNames $var.name }}
{{- fail (printf "gateway.env lists %s twice" $var.name) }}
{{- end }}
{{- $_ := set $envNames $var.name true }}
{{- end }}
{{- if and $gateway.caBundle.configMap $gateway.caBundle.secret }}
{{- fail (printf "gateway.caBundle: set configMap (%q) or secret (%q), not both" $gateway.caBundle.configMap $gateway.caBundle.secret) }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.watchNamespaces) (not .Values.networkPolicy.gateway.namespaces) }}
{{- fail "networkPolicy.enabled in cluster-wide mode (watchNamespaces empty): list the namespaces whose gateway to protect in networkPolicy.gateway.namespaces (NetworkPolicies are namespaced)" }}
{{- end }}
{{- end }}

{{/*
The rules on ServingEndpoints and the objects the operator owns: the same in the
cluster-wide ClusterRole and in each watched namespace's Role.
*/}}
{{- define "servegate.endpointRules" -}}
# The resource it reconciles (patch: kopf's finalizer and bookkeeping annotations).
- apiGroups: [servegate.io]
  resources: [servingendpoints]
  verbs: [list, watch, patch]
- apiGroups: [servegate.io]
  resources: [servingendpoints/status]
  verbs: [patch]
# Owned objects are written by server-side apply, which Kubernetes authorizes as patch,
# and also as create when the object does not exist yet.
# Secrets: read the referenced keys (existence only); apply the owned plaintext Secret.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
# Per-endpoint config (get: an invalid spec keeps its last good config).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
# The shared gateway; PDB and HPA are deleted when turned off.
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [create, patch, delete]
{{- if eq .Values.gateway.auth "kubernetes" }}
# gateway.auth kubernetes: the gateway's ServiceAccount (servegate-gateway), owned like the rest.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, patch]
{{- end }}
{{- if .Values.gateway.controlPlane }}
# gateway.controlPlane: the gateway's RoleBinding to the control-plane ClusterRole, owned
# like the rest (RBAC cannot restrict create by name; patch only that binding).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [patch]
  resourceNames: [{{ include "servegate.controlPlaneBindingName" . }}]
# Binding a role needs its permissions or `bind` on it: `bind` on that one role only.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  verbs: [bind]
  resourceNames: [{{ include "servegate.controlPlaneRoleName" . }}]
{{- end }}
{{- end }}

{{/*
gateway.auth kubernetes: the cluster-scoped rules for each gateway namespace's
ClusterRoleBinding to the reviewer ClusterRole. Namespaced mode names the bindings it may
change (those of the watched namespaces); RBAC cannot restrict create or list by name.
*/}}
{{- define "servegate.reviewBindingRules" -}}
# gateway.auth kubernetes: each gateway namespace's ClusterRoleBinding to the reviewer
# ClusterRole, applied with the gateway and deleted with its last endpoint (a
# cluster-scoped object cannot be owned by namespaced ones); list: the start-up sweep of
# bindings left behind.
{{- if .Values.watchNamespaces }}
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterrolebindings]
  verbs: [list, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterrolebindings]
  verbs: [patch, delete]
  resourceNames:
    {{- range .Values.watchNamespaces }}
    - {{ include "servegate.reviewBindingName" (list $ .) }}
    {{- end }}
{{- else }}
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterrolebindings]
  verbs: [list, create, patch, delete]
{{- end }}
# Binding a role needs its permissions or `bind` on it: `bind` on this one role only, so
# the operator can grant the gateways nothing else.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  verbs: [bind]
  resourceNames: [{{ include "servegate.reviewerRoleName" . }}]
{{- end }}
