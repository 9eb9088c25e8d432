//! Compact JSON Schemas for the tools. Every agent pays for tools/list in its context window,
//! so the schemas keep what a model needs — names, types, enums, required fields, one line per
//! argument — and drop the rest (nested descriptions, integer formats, `$schema`).

use std::sync::Arc;

use rmcp::model::JsonObject;
use schemars::JsonSchema;
use serde_json::{Map, Value};

/// Input schema: argument descriptions are kept, everything nested is stripped.
pub fn input<T: JsonSchema + std::any::Any>() -> Arc<JsonObject> {
    compact(rmcp::handler::server::common::schema_for_type::<T>(), true)
}

/// Output schema: structure only.
pub fn output<T: JsonSchema + std::any::Any>() -> Arc<JsonObject> {
    compact(
        rmcp::handler::server::common::schema_for_output::<T>(),
        false,
    )
}

fn compact(schema: Arc<JsonObject>, keep_arg_docs: bool) -> Arc<JsonObject> {
    let mut root = (*schema).clone();
    // Inline the definitions: each is used once or twice per tool, and a `$ref` costs as much
    // as a small enum.
    if let Some(Value::Object(defs)) = root.remove("$defs") {
        for v in root.values_mut() {
            inline(v, &defs, !keep_arg_docs);
        }
    }
    root.remove("$schema");
    root.remove("title");
    root.remove("description");
    for (k, v) in root.iter_mut() {
        match k.as_str() {
            "properties" => {
                if let Value::Object(props) = v {
                    for p in props.values_mut() {
                        if let Value::Object(o) = p {
                            let doc = o.remove("description");
                            strip(o);
                            if keep_arg_docs && let Some(d) = doc {
                                o.insert("description".into(), d);
                            }
                        }
                    }
                }
            }
            _ => {
                if let Value::Object(o) = v {
                    for d in o.values_mut() {
                        if let Value::Object(def) = d {
                            strip(def);
                        }
                    }
                }
            }
        }
    }
    Arc::new(root)
}

fn inline(v: &mut Value, defs: &Map<String, Value>, output: bool) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref")
                && let Some(def) = r.strip_prefix("#/$defs/").and_then(|n| defs.get(n))
            {
                let mut def = def.clone();
                inline(&mut def, defs, output);
                o.remove("$ref");
                if let Value::Object(d) = def {
                    for (k, v) in d {
                        o.entry(k).or_insert(v);
                    }
                }
            }
            if output {
                // Outputs are for machines; the enums are documented in the inputs.
                if o.remove("oneOf").is_some() {
                    o.insert("type".into(), "string".into());
                }
                if o.contains_key("properties") {
                    o.remove("required");
                }
                if o.get("additionalProperties") == Some(&Value::Bool(true)) {
                    o.remove("additionalProperties");
                }
            }
            for inner in o.values_mut() {
                inline(inner, defs, output);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| inline(i, defs, output)),
        _ => {}
    }
}

/// `Option<T>` arguments come out as `"type": [T, "null"]` or `anyOf: [T, null]`; many clients
/// (and models) handle only a single type, and leaving an argument out already means "none".
fn not_null(o: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = o.get("type") {
        let rest: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        if rest.len() == 1 {
            o.insert("type".into(), rest[0].clone());
        }
    }
    if let Some(Value::Array(any)) = o.get("anyOf") {
        let rest: Vec<Value> = any
            .iter()
            .filter(|v| v.get("type") != Some(&Value::from("null")))
            .cloned()
            .collect();
        if let [Value::Object(only)] = &rest[..] {
            let only = only.clone();
            o.remove("anyOf");
            for (k, v) in only {
                o.entry(k).or_insert(v);
            }
        }
    }
}

fn strip(o: &mut Map<String, Value>) {
    not_null(o);
    o.remove("description");
    o.remove("format");
    o.remove("title");
    if o.get("minimum") == Some(&Value::from(0)) {
        o.remove("minimum");
    }
    // oneOf of string constants (documented enum variants) → a plain enum.
    if let Some(Value::Array(variants)) = o.get("oneOf") {
        let consts: Option<Vec<Value>> = variants
            .iter()
            .map(|v| v.get("const").filter(|c| c.is_string()).cloned())
            .collect();
        if let Some(values) = consts {
            o.remove("oneOf");
            o.insert("type".into(), "string".into());
            o.insert("enum".into(), Value::Array(values));
        }
    }
    for v in o.values_mut() {
        match v {
            Value::Object(inner) => strip(inner),
            Value::Array(items) => {
                for i in items {
                    if let Value::Object(inner) = i {
                        strip(inner);
                    }
                }
            }
            _ => {}
        }
    }
}
