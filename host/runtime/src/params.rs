//! Operator parameters merged over a plugin's declared defaults, checked by type.

use crate::bindings::wit::{Field, ParamKind, ParamSpec, Value};

/// An operator parameter that does not fit the plugin's declaration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// The plugin declares no parameter of that name.
    #[error("unknown parameter `{name}`; this plugin takes: {known}")]
    Unknown { name: String, known: String },
    /// The value has the wrong type.
    #[error("parameter `{name}` must be {expected}, got {got}")]
    WrongType { name: String, expected: &'static str, got: &'static str },
}

/// Returns every declared parameter, with the operator's value where given and the default
/// otherwise. Integers are accepted where numbers are declared.
pub fn merge_params(specs: &[ParamSpec], overrides: &[Field]) -> Result<Vec<Field>, ParamError> {
    for field in overrides {
        let Some(spec) = specs.iter().find(|s| s.name == field.name) else {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(ParamError::Unknown { name: field.name.clone(), known });
        };
        if !fits(spec.kind, &field.value) {
            return Err(ParamError::WrongType { name: field.name.clone(), expected: kind_name(spec.kind), got: value_name(&field.value) });
        }
    }
    Ok(specs
        .iter()
        .map(|spec| {
            let value = overrides
                .iter()
                .find(|f| f.name == spec.name)
                .map(|f| match (spec.kind, &f.value) {
                    (ParamKind::Number, Value::Integer(i)) => Value::Number(*i as f64),
                    (_, v) => v.clone(),
                })
                .unwrap_or_else(|| spec.default.clone());
            Field { name: spec.name.clone(), value }
        })
        .collect())
}

fn fits(kind: ParamKind, value: &Value) -> bool {
    matches!(
        (kind, value),
        (ParamKind::Boolean, Value::Boolean(_))
            | (ParamKind::Integer, Value::Integer(_))
            | (ParamKind::Number, Value::Number(_) | Value::Integer(_))
            | (ParamKind::Text, Value::Text(_))
    )
}

fn kind_name(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Boolean => "a boolean",
        ParamKind::Integer => "an integer",
        ParamKind::Number => "a number",
        ParamKind::Text => "text",
    }
}

fn value_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::Number(_) => "a number",
        Value::Text(_) => "text",
        Value::Json(_) => "an object or array",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: ParamKind, default: Value) -> ParamSpec {
        ParamSpec { name: name.into(), kind, default, doc: String::new() }
    }

    #[test]
    fn merges_over_defaults_and_names_bad_fields() {
        let specs = [spec("grace_days", ParamKind::Integer, Value::Integer(8)), spec("min_orders", ParamKind::Integer, Value::Integer(2))];
        let merged = merge_params(&specs, &[Field { name: "grace_days".into(), value: Value::Integer(10) }]).unwrap();
        assert_eq!(merged[0].value, Value::Integer(10));
        assert_eq!(merged[1].value, Value::Integer(2));

        let err = merge_params(&specs, &[Field { name: "grace".into(), value: Value::Integer(1) }]).unwrap_err();
        assert!(err.to_string().contains("`grace`"), "{err}");
        let err = merge_params(&specs, &[Field { name: "grace_days".into(), value: Value::Text("x".into()) }]).unwrap_err();
        assert_eq!(err.to_string(), "parameter `grace_days` must be an integer, got text");
    }
}
