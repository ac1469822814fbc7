{{- define "klio-operator.name" -}}
{{- default .Release.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "klio-operator.serviceAccountName" -}}
{{- default (include "klio-operator.name" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "klio-operator.labels" -}}
app.kubernetes.io/name: klio-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: klio
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "klio-operator.selectorLabels" -}}
app.kubernetes.io/name: klio-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "klio-operator.watchNamespace" -}}
{{- if eq .Values.rbac.scope "namespace" -}}
{{- default .Release.Namespace .Values.rbac.watchNamespace -}}
{{- end -}}
{{- end -}}

{{/* operator/src/lib.rs RBAC_WATCHED_NAMESPACES, as deploy/base/clusterrole.yaml. */}}
{{- define "klio-operator.watchedRules" -}}
- apiGroups: ["klio.io"]
  resources: ["servers"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["klio.io"]
  resources: ["servers/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "patch", "create", "delete"]
- apiGroups: ["postgresql.cnpg.io"]
  resources: ["backups"]
  verbs: ["list", "create", "delete"]
- apiGroups: ["postgresql.cnpg.io"]
  resources: ["clusters"]
  verbs: ["get", "patch"]
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshots"]
  verbs: ["list", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
