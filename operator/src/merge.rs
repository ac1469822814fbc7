//! The merge of a Server's `spec.template` into the pod template the operator generates:
//! a small, predictable subset of Kubernetes' strategic merge.
//!
//! Rules, applied recursively from the top (`overlay` wins over `base`):
//! - objects merge key by key;
//! - `null` in the overlay removes the key (as in a JSON merge patch);
//! - lists named in [`NAMED_LISTS`] (`containers`, `initContainers`, `volumes`,
//!   `volumeMounts`, `env`) merge element by element on `name`: an overlay element whose
//!   name is in the base merges into it (recursively, by these same rules), one with a new
//!   name is appended, and base elements the overlay does not name stay;
//! - every other list (tolerations, args, ports...) and every scalar is replaced whole.
//!
//! So `template: {spec: {tolerations: [...], nodeSelector: {...}, containers: [{name:
//! klio, resources: {...}}]}}` adds tolerations and a node selector and sets the server
//! container's resources while keeping everything else the operator generated.

use serde_json::{Map, Value};

/// Lists whose elements are merged by their `name` instead of being replaced.
pub const NAMED_LISTS: &[&str] = &[
    "containers",
    "initContainers",
    "volumes",
    "volumeMounts",
    "env",
];

/// Merges `overlay` into `base` (see the module documentation).
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => merge_objects(b, o),
        (b, o) => *b = o.clone(),
    }
}

fn merge_objects(base: &mut Map<String, Value>, overlay: &Map<String, Value>) {
    for (key, o) in overlay {
        if o.is_null() {
            base.remove(key);
            continue;
        }
        let named = NAMED_LISTS.contains(&key.as_str());
        match (base.get_mut(key), o) {
            (Some(Value::Array(b)), Value::Array(ol)) if named && all_named(b) && all_named(ol) => {
                merge_named(b, ol)
            }
            // Objects recurse; lists and scalars are replaced.
            (Some(b), o) => merge(b, o),
            (None, o) => {
                base.insert(key.clone(), o.clone());
            }
        }
    }
}

fn name_of(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

fn all_named(list: &[Value]) -> bool {
    list.iter().all(|v| name_of(v).is_some())
}

fn merge_named(base: &mut Vec<Value>, overlay: &[Value]) {
    for o in overlay {
        let name = name_of(o);
        match base.iter_mut().find(|b| name_of(b) == name) {
            Some(b) => merge(b, o),
            None => base.push(o.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(mut base: Value, overlay: Value) -> Value {
        merge(&mut base, &overlay);
        base
    }

    #[test]
    fn maps_merge_recursively_and_the_overlay_wins_on_scalars() {
        let out = merged(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"hostNetwork": false}}),
            json!({"metadata": {"labels": {"b": "3", "c": "4"}}, "spec": {"hostNetwork": true}}),
        );
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"a": "1", "b": "3", "c": "4"}}, "spec": {"hostNetwork": true}})
        );
    }

    #[test]
    fn containers_merge_by_name_and_new_ones_are_appended() {
        let out = merged(
            json!({"containers": [
                {"name": "klio", "image": "klio:1", "args": ["server"], "resources": {"limits": {"cpu": "1"}}},
                {"name": "other", "image": "x"}
            ]}),
            json!({"containers": [
                {"name": "klio", "resources": {"requests": {"memory": "1Gi"}}},
                {"name": "sidecar", "image": "s"}
            ]}),
        );
        assert_eq!(
            out,
            json!({"containers": [
                {"name": "klio", "image": "klio:1", "args": ["server"],
                 "resources": {"limits": {"cpu": "1"}, "requests": {"memory": "1Gi"}}},
                {"name": "other", "image": "x"},
                {"name": "sidecar", "image": "s"}
            ]})
        );
    }

    #[test]
    fn env_and_volume_mounts_inside_a_container_merge_by_name_too() {
        let out = merged(
            json!({"containers": [{"name": "klio", "env": [{"name": "A", "value": "1"}],
                                   "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]}),
            json!({"containers": [{"name": "klio", "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}],
                                   "volumeMounts": [{"name": "extra", "mountPath": "/e"}]}]}),
        );
        assert_eq!(
            out,
            json!({"containers": [{"name": "klio",
                "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}],
                "volumeMounts": [{"name": "data", "mountPath": "/d"}, {"name": "extra", "mountPath": "/e"}]}]})
        );
    }

    #[test]
    fn other_lists_are_replaced_whole() {
        let out = merged(
            json!({"tolerations": [{"key": "a"}], "containers": [{"name": "klio", "args": ["server", "--config", "x"]}]}),
            json!({"tolerations": [{"key": "b"}], "containers": [{"name": "klio", "args": ["other"]}]}),
        );
        assert_eq!(
            out,
            json!({"tolerations": [{"key": "b"}], "containers": [{"name": "klio", "args": ["other"]}]})
        );
    }

    #[test]
    fn null_removes_a_key_and_absent_keys_are_kept() {
        let out = merged(
            json!({"spec": {"nodeSelector": {"a": "b"}, "priorityClassName": "high"}}),
            json!({"spec": {"nodeSelector": null}}),
        );
        assert_eq!(out, json!({"spec": {"priorityClassName": "high"}}));
    }

    #[test]
    fn a_named_list_with_unnamed_elements_is_replaced() {
        let out = merged(
            json!({"volumes": [{"name": "a"}]}),
            json!({"volumes": [{"emptyDir": {}}]}),
        );
        assert_eq!(out, json!({"volumes": [{"emptyDir": {}}]}));
    }
}
