//! Checks resources/openapi/covm.yaml against Cloud Hypervisor's OpenAPI
//! document (resources/openapi/cloud-hypervisor/cloud-hypervisor.yaml, CH's
//! own file, unchanged): on every endpoint both serve, covm takes the same
//! request body (so a client generated from either document sends the same
//! bodies) and answers the same success statuses; every endpoint CH
//! documents and covm does not serve is one covm knows it lacks
//! ([`UNIMPLEMENTED`]); and covm's error answers are documented as CH's
//! error body.

use super::routes::{ROUTES, UNIMPLEMENTED};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use yaml_rust2::{Yaml, YamlLoader};

const COVM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/openapi/covm.yaml");
const CH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../resources/openapi/cloud-hypervisor/cloud-hypervisor.yaml"
);

/// The HTTP methods an OpenAPI path item may hold.
const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The schema keywords that must be equal on both sides: what a generated
/// client's types, defaults and validation depend on. `enum` and
/// `required` are compared as sets, `items`, `properties` and
/// `additionalProperties` recursively; descriptions may differ.
const SAME_KEYWORDS: &[&str] = &[
    "type",
    "format",
    "default",
    "nullable",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "readOnly",
    "writeOnly",
    "deprecated",
];

/// Marks on a property covm adds to one of CH's schemas.
const ADDITION_MARKS: &[&str] = &["x-covm-extension", "x-ch-undocumented"];

fn load(path: &str) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one YAML document");
    docs.remove(0)
}

/// A mapping key as text: YAML reads `204:` as an integer and `"204":` as a
/// string, and CH's document has both.
fn key_text(key: &Yaml) -> String {
    match key {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// A mapping's entries by key text (none if `node` is not a mapping).
fn entries(node: &Yaml) -> BTreeMap<String, &Yaml> {
    node.as_hash()
        .map(|h| h.iter().map(|(k, v)| (key_text(k), v)).collect())
        .unwrap_or_default()
}

/// A value as a difference report shows it.
fn show(value: &Yaml) -> String {
    match value {
        Yaml::BadValue => "absent".into(),
        Yaml::Null => "null".into(),
        Yaml::String(s) => format!("{s:?}"),
        Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Array(items) => format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", ")),
        Yaml::Hash(h) => format!(
            "{{{}}}",
            h.iter()
                .map(|(k, v)| format!("{}: {}", key_text(k), show(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Yaml::Alias(n) => format!("alias {n}"),
    }
}

/// A list's members as text, order aside.
fn as_set(value: &Yaml) -> BTreeSet<String> {
    let text = |member: &Yaml| match member {
        Yaml::String(s) => s.clone(),
        other => show(other),
    };
    value.as_vec().map(|v| v.iter().map(text).collect()).unwrap_or_default()
}

/// Every operation of a document, by (path, method).
fn operations(doc: &Yaml) -> BTreeMap<(String, String), &Yaml> {
    let mut all = BTreeMap::new();
    for (path, item) in entries(&doc["paths"]) {
        for (method, operation) in entries(item) {
            if METHODS.contains(&method.as_str()) {
                all.insert((path.clone(), method), operation);
            }
        }
    }
    all
}

/// Follows a `$ref` to `#/components/<section>/NAME` of `doc`.
fn follow<'a>(doc: &'a Yaml, reference: &str, section: &str) -> (&'a Yaml, String) {
    let prefix = format!("#/components/{section}/");
    let name = reference
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("$ref {reference:?} is not under {prefix}"));
    let target = &doc["components"][section][name];
    assert!(!target.is_badvalue(), "$ref {reference:?} names nothing");
    (target, name.to_string())
}

/// A schema with its `$ref`s followed, and the name of the component it
/// ended at (None for a schema written in place).
fn resolve<'a>(doc: &'a Yaml, mut schema: &'a Yaml) -> (&'a Yaml, Option<String>) {
    let mut name = None;
    for _ in 0..64 {
        let Some(reference) = schema["$ref"].as_str() else {
            return (schema, name);
        };
        let (target, target_name) = follow(doc, reference, "schemas");
        schema = target;
        name = Some(target_name);
    }
    panic!("a cycle of $refs through {name:?}");
}

/// A response with its `$ref` (to `#/components/responses/`) followed.
fn resolve_response<'a>(doc: &'a Yaml, response: &'a Yaml) -> &'a Yaml {
    match response["$ref"].as_str() {
        Some(reference) => follow(doc, reference, "responses").0,
        None => response,
    }
}

/// Whether a property covm's document adds is marked as an addition, on
/// itself or on the component it refers to.
fn marked(covm: &Yaml, property: &Yaml) -> bool {
    let (target, _) = resolve(covm, property);
    [property, target]
        .iter()
        .any(|node| ADDITION_MARKS.iter().any(|mark| node[*mark].as_bool() == Some(true)))
}

/// The JSON body schema of a response, `$ref`s followed.
fn response_schema<'a>(doc: &'a Yaml, response: &'a Yaml) -> &'a Yaml {
    let response = resolve_response(doc, response);
    resolve(doc, &response["content"]["application/json"]["schema"]).0
}

/// One way covm's document departs from CH's, at a JSON path such as
/// `PUT /vm.create body.memory.size`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Difference {
    path: String,
    what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

/// Compares covm's document with CH's, collecting every difference.
struct Comparison<'a> {
    ch: &'a Yaml,
    covm: &'a Yaml,
    differences: Vec<Difference>,
    /// The (CH, covm) component pairs being compared on the current path,
    /// so a schema that contains itself is compared once.
    open: Vec<(String, String)>,
}

impl<'a> Comparison<'a> {
    fn new(ch: &'a Yaml, covm: &'a Yaml) -> Self {
        Comparison {
            ch,
            covm,
            differences: Vec::new(),
            open: Vec::new(),
        }
    }

    fn differ(&mut self, path: &str, what: String) {
        self.differences.push(Difference {
            path: path.to_string(),
            what,
        });
    }

    /// Every operation both documents have: request body and success statuses.
    fn operations(&mut self) {
        let ch_operations = operations(self.ch);
        let covm_operations = operations(self.covm);
        for ((path, method), ch_op) in &ch_operations {
            let Some(covm_op) = covm_operations.get(&(path.clone(), method.clone())) else {
                continue;
            };
            let at = format!("{} {path}", method.to_uppercase());
            if ch_op["operationId"] != covm_op["operationId"] {
                self.differ(
                    &at,
                    format!(
                        "operationId is {} in CH's document, {} in covm's (a generated client names its call after it)",
                        show(&ch_op["operationId"]),
                        show(&covm_op["operationId"])
                    ),
                );
            }
            let success = |op: &Yaml| -> BTreeSet<String> {
                entries(&op["responses"])
                    .into_keys()
                    .filter(|status| status.starts_with('2'))
                    .collect()
            };
            let (ch_success, covm_success) = (success(ch_op), success(covm_op));
            if ch_success != covm_success {
                self.differ(
                    &at,
                    format!("success statuses are {ch_success:?} in CH's document, {covm_success:?} in covm's"),
                );
            }
            self.request_body(&format!("{at} body"), &ch_op["requestBody"], &covm_op["requestBody"]);
        }
    }

    fn request_body(&mut self, at: &str, ch: &'a Yaml, covm: &'a Yaml) {
        match (ch.is_badvalue(), covm.is_badvalue()) {
            (true, true) => return,
            (false, true) => return self.differ(at, "CH's document has a request body, covm's none".into()),
            (true, false) => return self.differ(at, "covm's document has a request body, CH's none".into()),
            (false, false) => {}
        }
        if ch["required"] != covm["required"] {
            self.differ(
                at,
                format!(
                    "required is {} in CH's document, {} in covm's",
                    show(&ch["required"]),
                    show(&covm["required"])
                ),
            );
        }
        let (ch_content, covm_content) = (entries(&ch["content"]), entries(&covm["content"]));
        let media = |content: &BTreeMap<String, &Yaml>| content.keys().cloned().collect::<BTreeSet<_>>();
        if media(&ch_content) != media(&covm_content) {
            self.differ(
                at,
                format!(
                    "media types are {:?} in CH's document, {:?} in covm's",
                    media(&ch_content),
                    media(&covm_content)
                ),
            );
        }
        for (media_type, ch_media) in &ch_content {
            if let Some(covm_media) = covm_content.get(media_type) {
                self.schema(at, &ch_media["schema"], &covm_media["schema"]);
            }
        }
    }

    fn schema(&mut self, at: &str, ch: &'a Yaml, covm: &'a Yaml) {
        let (ch, ch_name) = resolve(self.ch, ch);
        let (covm, covm_name) = resolve(self.covm, covm);
        let pair = ch_name.zip(covm_name);
        if let Some(pair) = &pair {
            if self.open.contains(pair) {
                return;
            }
            self.open.push(pair.clone());
        }
        self.schema_body(at, ch, covm);
        if pair.is_some() {
            self.open.pop();
        }
    }

    fn schema_body(&mut self, at: &str, ch: &'a Yaml, covm: &'a Yaml) {
        for keyword in SAME_KEYWORDS {
            let (ch_value, covm_value) = (&ch[*keyword], &covm[*keyword]);
            if ch_value != covm_value {
                self.differ(
                    at,
                    format!(
                        "{keyword} is {} in CH's document, {} in covm's",
                        show(ch_value),
                        show(covm_value)
                    ),
                );
            }
        }
        for keyword in ["enum", "required"] {
            let (ch_set, covm_set) = (as_set(&ch[keyword]), as_set(&covm[keyword]));
            if ch_set != covm_set {
                self.differ(
                    at,
                    format!("{keyword} is {ch_set:?} in CH's document, {covm_set:?} in covm's"),
                );
            }
        }
        for keyword in ["allOf", "anyOf", "oneOf", "not"] {
            if ch[keyword].is_badvalue() != covm[keyword].is_badvalue() {
                self.differ(
                    at,
                    format!(
                        "{keyword} is {} in CH's document, {} in covm's",
                        show(&ch[keyword]),
                        show(&covm[keyword])
                    ),
                );
            }
        }
        match (&ch["items"], &covm["items"]) {
            (Yaml::BadValue, Yaml::BadValue) => {}
            (Yaml::BadValue, _) => self.differ(at, "covm's document has items, CH's none".into()),
            (_, Yaml::BadValue) => self.differ(at, "CH's document has items, covm's none".into()),
            (ch_items, covm_items) => self.schema(&format!("{at}[]"), ch_items, covm_items),
        }
        match (&ch["additionalProperties"], &covm["additionalProperties"]) {
            (Yaml::BadValue, _) => {}
            (ch_more @ Yaml::Hash(_), covm_more @ Yaml::Hash(_)) => self.schema(&format!("{at}.*"), ch_more, covm_more),
            (ch_more, covm_more) if ch_more != covm_more => self.differ(
                at,
                format!(
                    "additionalProperties is {} in CH's document, {} in covm's",
                    show(ch_more),
                    show(covm_more)
                ),
            ),
            _ => {}
        }
        let (ch_properties, covm_properties) = (entries(&ch["properties"]), entries(&covm["properties"]));
        for (name, ch_property) in &ch_properties {
            let here = format!("{at}.{name}");
            match covm_properties.get(name) {
                Some(covm_property) => self.schema(&here, ch_property, covm_property),
                None => self.differ(&here, "CH's document defines it, covm's does not".into()),
            }
        }
        for (name, covm_property) in &covm_properties {
            if !ch_properties.contains_key(name) && !marked(self.covm, covm_property) {
                self.differ(
                    &format!("{at}.{name}"),
                    "covm's document adds it without x-covm-extension: true or x-ch-undocumented: true".into(),
                );
            }
        }
    }
}

/// Every difference between covm's document and CH's on the operations
/// both have.
fn differences(ch: &Yaml, covm: &Yaml) -> Vec<Difference> {
    let mut comparison = Comparison::new(ch, covm);
    comparison.operations();
    comparison.differences
}

fn report(differences: &[Difference]) -> String {
    differences.iter().map(|d| format!("\n  {d}")).collect()
}

#[test]
fn shared_endpoints_take_chs_bodies_and_answer_its_success_statuses() {
    let (ch, covm) = (load(CH), load(COVM));
    let ch_operations = operations(&ch);
    let shared: Vec<_> = operations(&covm)
        .into_keys()
        .filter(|op| ch_operations.contains_key(op))
        .collect();
    assert_eq!(
        shared.len(),
        ROUTES.len(),
        "every route covm serves is one of CH's: {shared:?}"
    );
    let differences = differences(&ch, &covm);
    assert!(
        differences.is_empty(),
        "covm.yaml departs from Cloud Hypervisor's document in {} places:{}",
        differences.len(),
        report(&differences)
    );
}

#[test]
fn every_ch_endpoint_covm_lacks_is_known_unimplemented() {
    let ch = load(CH);
    let ch_paths: BTreeSet<String> = entries(&ch["paths"]).into_keys().collect();
    let served: BTreeSet<String> = ROUTES.iter().map(|(path, _, _)| path.to_string()).collect();
    let unimplemented: BTreeSet<String> = UNIMPLEMENTED.iter().map(|(path, _)| path.to_string()).collect();
    // Every path UNIMPLEMENTED lists is in CH's document, vm.coredump (which
    // CH serves only when built with its guest_debug feature) and vm.nmi
    // included, so there is no exception to allow here.
    let lacking: BTreeSet<String> = ch_paths.difference(&served).cloned().collect();
    assert_eq!(
        lacking,
        unimplemented,
        "CH's endpoints covm does not serve must be exactly routes::UNIMPLEMENTED (so a new CH endpoint is \
         noticed): missing from UNIMPLEMENTED {:?}, listed but not CH's or served by covm {:?}",
        lacking.difference(&unimplemented).collect::<Vec<_>>(),
        unimplemented.difference(&lacking).collect::<Vec<_>>()
    );
    // On the paths covm serves, it serves every method CH documents.
    let ch_operations: BTreeSet<(String, String)> = operations(&ch).into_keys().collect();
    let served_operations: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(path, method, _)| (path.to_string(), method.as_str().to_lowercase()))
        .collect();
    let missing: Vec<_> = ch_operations
        .iter()
        .filter(|(path, _)| served.contains(path))
        .filter(|op| !served_operations.contains(*op))
        .collect();
    assert!(
        missing.is_empty(),
        "CH documents these, covm does not serve them: {missing:?}"
    );
}

#[test]
fn the_comparison_reports_a_changed_type_by_its_path() {
    let covm = load(COVM);
    let mut ch = load(CH);
    assert!(
        differences(&ch, &covm).is_empty(),
        "the documents agree before the change"
    );
    ch["components"]["schemas"]["MemoryConfig"]["properties"]["size"]["type"] = Yaml::String("string".into());
    let found = differences(&ch, &covm);
    assert_eq!(
        found,
        vec![Difference {
            path: "PUT /vm.create body.memory.size".into(),
            what: "type is \"string\" in CH's document, \"integer\" in covm's".into(),
        }],
        "{}",
        report(&found)
    );
}

#[test]
fn an_unmarked_addition_and_a_missing_property_are_reported() {
    let ch = load(CH);
    let mut covm = load(COVM);
    let platform = &mut covm["components"]["schemas"]["PlatformConfig"]["properties"];
    platform["emulated_cvm"]
        .as_mut_hash()
        .unwrap()
        .remove(&Yaml::String("x-covm-extension".into()));
    platform.as_mut_hash().unwrap().remove(&Yaml::String("iommufd".into()));
    let paths: Vec<String> = differences(&ch, &covm).into_iter().map(|d| d.path).collect();
    assert_eq!(
        paths,
        [
            "PUT /vm.create body.platform.iommufd",
            "PUT /vm.create body.platform.emulated_cvm"
        ]
    );
}

#[test]
fn response_properties_covm_adds_are_marked() {
    let (ch, covm) = (load(CH), load(COVM));
    let ch_operations = operations(&ch);
    let mut unmarked = Vec::new();
    for (op, covm_op) in operations(&covm) {
        let Some(ch_op) = ch_operations.get(&op) else { continue };
        for (status, covm_response) in entries(&covm_op["responses"]) {
            let Some(ch_response) = entries(&ch_op["responses"]).remove(&status) else {
                continue;
            };
            let ch_properties = entries(&response_schema(&ch, ch_response)["properties"]);
            for (name, property) in entries(&response_schema(&covm, covm_response)["properties"]) {
                if !ch_properties.contains_key(&name) && !marked(&covm, property) {
                    unmarked.push(format!("{} {} {status} .{name}", op.1.to_uppercase(), op.0));
                }
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "response properties covm adds without x-covm-extension: {unmarked:?}"
    );
}

#[test]
fn error_answers_are_documented_as_chs_error_body() {
    let covm = load(COVM);
    let error = &covm["components"]["schemas"]["ErrorResponse"];
    assert_eq!(error["type"].as_str(), Some("array"));
    assert_eq!(error["items"]["type"].as_str(), Some("string"));
    assert_eq!(error["minItems"].as_i64(), Some(1));
    let mut responses: Vec<(String, &Yaml)> = Vec::new();
    for ((path, method), operation) in operations(&covm) {
        for (status, response) in entries(&operation["responses"]) {
            if status.starts_with('4') || status.starts_with('5') {
                responses.push((format!("{} {path} {status}", method.to_uppercase()), response));
            }
        }
    }
    // The shared responses are all error answers (405 for a wrong method among them).
    for (name, response) in entries(&covm["components"]["responses"]) {
        responses.push((format!("components/responses/{name}"), response));
    }
    let mut wrong = Vec::new();
    for (at, response) in responses {
        let content = entries(&resolve_response(&covm, response)["content"]);
        // covm writes a body on every error answer.
        if content.is_empty() {
            wrong.push(format!("{at}: no body"));
        }
        for (media_type, media) in content {
            if media["schema"]["$ref"].as_str() != Some("#/components/schemas/ErrorResponse") {
                wrong.push(format!("{at} {media_type}: {}", show(&media["schema"])));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "error answers not documented as ErrorResponse:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_reference_in_covm_yaml_resolves() {
    fn walk<'a>(node: &'a Yaml, found: &mut Vec<&'a str>) {
        match node {
            Yaml::Hash(h) => {
                for (key, value) in h {
                    match (key.as_str(), value.as_str()) {
                        (Some("$ref"), Some(reference)) => found.push(reference),
                        _ => walk(value, found),
                    }
                }
            }
            Yaml::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let covm = load(COVM);
    let mut references = Vec::new();
    walk(&covm, &mut references);
    assert!(!references.is_empty());
    for reference in references {
        let section = reference
            .strip_prefix("#/components/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("$ref {reference:?} is not under #/components/"));
        follow(&covm, reference, section);
    }
}
