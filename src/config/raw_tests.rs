use super::*;

fn shape(text: &str) -> String {
    match read(text, Path::new("t.toml")) {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn keys_keep_their_case() {
    assert_eq!(
        shape("[mesh]\nName = \"x\"\n"),
        "t.toml: mesh.Name: unknown key; did you mean \"name\"? valid keys here are: name, secret_file, allow_anonymous_bridges"
    );
}

#[test]
fn unknown_keys_are_named_with_the_element_name() {
    let text = "[[group]]\nname = \"hub\"\n[[group.member]]\nname = \"hub-1\"\nadmn = \"x\"\n";
    assert_eq!(
        shape(text),
        "t.toml: group[hub].member[hub-1].admn: unknown key; did you mean \"admin\"? \
         valid keys here are: name, admin, data_dir, bind, weight, replication, listener"
    );
}

#[test]
fn scalar_types_are_not_converted() {
    let cases = [
        ("[[group]]\nreplicas = \"3\"\n", "t.toml: group[0].replicas: is \"3\", but must be a whole number; write it like replicas = 3"),
        ("[[group]]\nreplicas = 2.6\n", "t.toml: group[0].replicas: is 2.6, but must be a whole number; write it like replicas = 3"),
        ("[[connector]]\nduplex = \"yes\"\n", "t.toml: connector[0].duplex: is \"yes\", but must be true or false; write it like duplex = false"),
        ("[[connector]]\nduplex = 1\n", "t.toml: connector[0].duplex: is 1, but must be true or false; write it like duplex = false"),
        ("[mesh]\nname = 5\n", "t.toml: mesh.name: is 5, but must be a string; write it like name = \"demo\""),
        ("mesh = 5\n", "t.toml: mesh: is 5, but must be a table; write it as a [mesh] table"),
        ("[group]\nname = \"a\"\n", "t.toml: group: is a table, but must be a list; write a [[group]] table (double brackets) for each entry"),
        ("[broker]\nprefetch = \"10\"\n", "t.toml: broker.prefetch: is \"10\", but must be a whole number; write it like prefetch = 1000"),
        ("[[connector]]\nreconnect_multiplier = nan\n", "t.toml: connector[0].reconnect_multiplier: is nan or inf, which no key accepts; write it like reconnect_multiplier = 2.0"),
        ("[[group]]\nname = \"hub\"\nreplicas = -inf\n", "t.toml: group[hub].replicas: is nan or inf, which no key accepts; write it like replicas = 3"),
    ];
    for (text, expected) in cases {
        assert_eq!(shape(text), expected, "{text}");
    }
    assert_eq!(shape("[[connector]]\nreconnect_multiplier = 2\n"), "ok");
}

#[test]
fn toml_syntax_errors_fit_on_one_line() {
    assert_eq!(
        shape("[mesh]\nname = \"a\"\nname = \"b\"\n"),
        "t.toml: TOML syntax error at line 3, column 1 (name = \"b\"): duplicate key; fix the TOML at line 3"
    );
}

/// Every key path (without indices) in a parsed tree, tables included.
fn key_paths(tree: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    let Some(table) = tree.as_object() else {
        return;
    };
    for (key, child) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match child {
            serde_json::Value::Object(_) => key_paths(child, &path, out),
            serde_json::Value::Array(items) => {
                for item in items {
                    key_paths(item, &path, out);
                }
            }
            _ => {}
        }
        out.insert(path);
    }
}

/// The keys serde accepts in the table at `path`, read from its unknown-key refusal.
fn accepted_keys(path: &str) -> Vec<String> {
    let mut text = String::new();
    let mut at = String::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        at = if at.is_empty() {
            part.to_string()
        } else {
            format!("{at}.{part}")
        };
        match example(&at) {
            Some(Example::Tables) => text.push_str(&format!("[[{at}]]\n")),
            _ => text.push_str(&format!("[{at}]\n")),
        }
    }
    text.push_str("zz_unknown = 1\n");
    let fix = match read(&text, Path::new("t.toml")) {
        Err(e) => e.fix,
        Ok(_) => panic!("zz_unknown must be refused in {path:?}"),
    };
    let list = fix
        .rsplit("valid keys here are: ")
        .next()
        .unwrap_or_default();
    list.split(", ")
        .map(|k| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        })
        .collect()
}

#[test]
fn the_reference_topology_sets_every_key_the_format_accepts() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/reference.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => panic!("{}: {e}", file.display()),
    };
    let parsed = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>());
    let tree = match parsed {
        Ok(tree) => tree,
        Err(e) => panic!("{e}"),
    };
    let mut in_reference = std::collections::BTreeSet::new();
    key_paths(&tree, "", &mut in_reference);
    let documented: Vec<String> = documented_keys();
    assert_eq!(in_reference.into_iter().collect::<Vec<_>>(), documented);

    let tables = documented
        .iter()
        .filter(|k| matches!(example(k), Some(Example::Table | Example::Tables)));
    let mut accepted: Vec<String> = std::iter::once(String::new())
        .chain(tables.cloned())
        .flat_map(|t| accepted_keys(&t))
        .collect();
    accepted.sort();
    assert_eq!(
        accepted, documented,
        "EXAMPLES must list exactly the keys the raw structs accept"
    );
}

#[test]
fn edit_distance_counts_single_edits() {
    assert_eq!(edit_distance("admin", "admn"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}
