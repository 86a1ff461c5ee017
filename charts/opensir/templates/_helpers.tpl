{{/*
Names. Kubernetes names are DNS labels: at most 63 characters.
*/}}
{{- define "opensir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "opensir.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's objects: "<fullname>-<component>", e.g. "opensir-minio". */}}
{{- define "opensir.componentName" -}}
{{- printf "%s-%s" (include "opensir.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "opensir.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels of every object. Call with (dict "root" $ "component" "operator").
*/}}
{{- define "opensir.labels" -}}
helm.sh/chart: {{ include "opensir.chart" .root }}
{{ include "opensir.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: opensir
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select a component's pods; they never change across upgrades. */}}
{{- define "opensir.selectorLabels" -}}
app.kubernetes.io/name: {{ include "opensir.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "opensir.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "opensir.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "repository:tag", the tag defaulting to the chart's appVersion. Call with (dict "image" ... "root" $). */}}
{{- define "opensir.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/*
The restricted Pod Security Standard
(https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted), shared by every pod
of the chart. Only the identity is configurable.
*/}}
{{- define "opensir.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "opensir.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
RBAC rules of the operator in a namespace (Role) or in all of them (ClusterRole). Every verb is one the
operator uses; tests/unit/test_chart_rbac.py checks them against the requests of the operator's e2e tests.
*/}}
{{- define "opensir.namespacedRules" -}}
- apiGroups: ["opensir.io"]
  resources: ["selfplayruns"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["opensir.io"]
  resources: ["selfplayruns/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) require this to set them.
- apiGroups: ["opensir.io"]
  resources: ["selfplayruns/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
{{- if .Values.networkPolicy.enabled }}
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
{{- end }}
# kopf posts events about the runs it handles (warnings: refused spec changes, failures), through the
# core v1 API only (kopf never writes events.k8s.io).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/*
Cluster-scoped reads of kopf's resource scanning (CRDs; namespaces when it watches all of them). The
operator turns scanning off (settings.scanning.disabled), so they are granted only with rbac.kopfScanning.
*/}}
{{- define "opensir.clusterRules" -}}
{{- if .Values.rbac.kopfScanning }}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if not .Values.operator.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
{{- end -}}

{{- define "opensir.minio.secretName" -}}
{{- default (include "opensir.componentName" (dict "root" . "component" "minio")) .Values.minio.existingSecret -}}
{{- end -}}
