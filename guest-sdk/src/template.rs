//! `{{name}}` placeholders in copy, filled from a lookup.

use alloc::string::String;

/// Replaces each `{{ name }}` in `template` with `lookup(name)`. `{{ name | fallback }}`
/// uses the fallback text when the name is unknown; otherwise an unknown name becomes the
/// empty string. An unclosed `{{` is kept as written.
pub fn render(template: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else { break };
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..start + 2 + len];
        let (name, fallback) = match inner.split_once('|') {
            Some((name, fallback)) => (name.trim(), fallback.trim()),
            None => (inner.trim(), ""),
        };
        match lookup(name).filter(|v| !v.is_empty()) {
            Some(value) => out.push_str(&value),
            None => out.push_str(fallback),
        }
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_known_names_and_blanks_unknown() {
        let lookup = |name: &str| (name == "first_name").then(|| String::from("Ann"));
        assert_eq!(render("Hi {{ first_name }}, {{x}}!", lookup), "Hi Ann, !");
        assert_eq!(render("open {{ end", lookup), "open {{ end");
        assert_eq!(render("Hi {{ nick | there }}", lookup), "Hi there");
    }
}
