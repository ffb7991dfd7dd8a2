//! Typed access to operator parameters; the host has already merged them over the defaults.

use alloc::format;
use alloc::string::String;

use crate::{Context, Value};

impl Context {
    /// The raw value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.params.iter().find(|p| p.name == name).map(|p| &p.value)
    }

    /// An integer parameter; a number with no fraction counts too.
    pub fn integer(&self, name: &str) -> Result<i64, String> {
        match self.param(name) {
            Some(Value::Integer(i)) => Ok(*i),
            Some(Value::Number(n)) if *n == (*n as i64) as f64 => Ok(*n as i64),
            other => Err(param_error(name, "an integer", other)),
        }
    }

    /// A number parameter; integers are widened.
    pub fn number(&self, name: &str) -> Result<f64, String> {
        match self.param(name) {
            Some(Value::Number(n)) => Ok(*n),
            Some(Value::Integer(i)) => Ok(*i as f64),
            other => Err(param_error(name, "a number", other)),
        }
    }

    /// A text parameter.
    pub fn text(&self, name: &str) -> Result<&str, String> {
        match self.param(name) {
            Some(Value::Text(s)) => Ok(s),
            other => Err(param_error(name, "text", other)),
        }
    }

    /// A boolean parameter.
    pub fn flag(&self, name: &str) -> Result<bool, String> {
        match self.param(name) {
            Some(Value::Boolean(b)) => Ok(*b),
            other => Err(param_error(name, "a boolean", other)),
        }
    }
}

fn param_error(name: &str, expected: &str, got: Option<&Value>) -> String {
    match got {
        None => format!("parameter `{name}` is missing; declare it in describe() so the host fills in its default"),
        Some(value) => format!("parameter `{name}` must be {expected}, got {value:?}"),
    }
}

impl Value {
    /// The value as a number, for integers and numbers.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Integer(i) => Some(*i as f64),
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The value as text, for text only.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}
