//! Hostile JSON for property tests.
//!
//! Both ends of runvm read JSON an attacker can shape: the runtime reads
//! config.json (which mixes the image's settings with the user's), the
//! supervisor and the agent read each other's protocol messages. Their
//! property tests start from valid documents and mutate them with the
//! generators here, so that every reader is tried against the same
//! numbers that break careless conversions, the same deep nesting and the
//! same kinds of damage.

use proptest::prelude::*;
use serde_json::{json, Value};

/// Proptest's default configuration with `cases` cases, unless the
/// `PROPTEST_CASES` environment variable says otherwise.
pub fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c
}

/// Numbers that break careless conversions: any 64-bit integer or finite
/// float, and, more often, the boundaries of the integer types runvm
/// narrows to.
pub fn edgy_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        3 => prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(i64::MAX - 1),
            json!(u64::MAX),
            json!(u32::MAX),
            json!(u32::MAX as u64 + 1),
            json!(u16::MAX as u64 + 1),
            json!(i32::MIN),
            json!(127 * 1024 * 1024),
            json!(128 * 1024 * 1024),
            json!(1e300),
            json!(-0.5),
        ]),
    ]
}

/// Field names: mostly the `known` ones a reader looks for, sometimes any
/// short string.
pub fn field_name(known: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => prop::sample::select(known).prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

/// Any JSON value up to four levels deep, with strings from `string` and
/// object keys from `key`.
pub fn any_json(
    string: impl Strategy<Value = String> + 'static,
    key: impl Strategy<Value = String> + Clone + 'static,
) -> impl Strategy<Value = Value> + Clone {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        edgy_number(),
        string.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One change to a JSON document.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Replace the `at`-th node (pre-order, modulo the node count).
    Replace { at: usize, with: Value },
    /// Drop a field or element of the `at`-th node.
    Remove { at: usize },
    /// Add a field to the `at`-th node, if it is an object.
    Insert { at: usize, key: String, with: Value },
    /// Set the value at a JSON pointer a reader looks at (creating the
    /// last field if its parent is an object).
    Set { path: &'static str, with: Value },
}

/// Replacements, removals and insertions anywhere in a document, with new
/// values from `value` and new keys from `key`.
pub fn tree_mutation(
    value: impl Strategy<Value = Value> + Clone + 'static,
    key: impl Strategy<Value = String> + 'static,
) -> BoxedStrategy<Mutation> {
    prop_oneof![
        (any::<usize>(), value.clone()).prop_map(|(at, with)| Mutation::Replace { at, with }),
        any::<usize>().prop_map(|at| Mutation::Remove { at }),
        (any::<usize>(), key, value).prop_map(|(at, key, with)| Mutation::Insert { at, key, with }),
    ]
    .boxed()
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The `n`-th node of `v` in pre-order, if `v` has that many.
fn nth_node<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|c| nth_node(c, n)),
        Value::Object(o) => o.values_mut().find_map(|c| nth_node(c, n)),
        _ => None,
    }
}

/// Applies `m` to `v`; a mutation that does not fit (an insertion into a
/// non-object, a pointer whose parent is missing) leaves `v` as it is.
pub fn apply(v: &mut Value, m: &Mutation) {
    let nodes = count_nodes(v);
    fn node(v: &mut Value, at: usize, nodes: usize) -> &mut Value {
        nth_node(v, &mut (at % nodes)).expect("below the node count")
    }
    match m {
        Mutation::Replace { at, with } => *node(v, *at, nodes) = with.clone(),
        Mutation::Remove { at } => match node(v, *at, nodes) {
            Value::Object(o) if !o.is_empty() => {
                let k = o.keys().nth(at % o.len()).cloned().expect("in range");
                o.remove(&k);
            }
            Value::Array(a) if !a.is_empty() => {
                let i = at % a.len();
                a.remove(i);
            }
            _ => {}
        },
        Mutation::Insert { at, key, with } => {
            if let Value::Object(o) = node(v, *at, nodes) {
                o.insert(key.clone(), with.clone());
            }
        }
        Mutation::Set { path, with } => {
            if let Some(target) = v.pointer_mut(path) {
                *target = with.clone();
            } else if let Some((parent, key)) = path.rsplit_once('/') {
                if let Some(Value::Object(o)) = v.pointer_mut(parent) {
                    o.insert(key.to_owned(), with.clone());
                }
            }
        }
    }
}

/// The kinds of address text a protocol message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// An IPv4 or IPv6 address: `172.17.0.1`, `fd00::1`.
    Ip,
    /// An address with its prefix length: `172.17.0.2/16`, `fd00::2/64`.
    IpPrefix,
    /// An Ethernet address: `02:42:ac:11:00:02`.
    Mac,
}

/// The text of an address field, and whether a strict reader must take it.
#[derive(Debug, Clone)]
pub struct AddressText {
    pub text: String,
    /// Well-formed texts are written in canonical form (lower-case hex,
    /// IPv6 compressed as `std` writes it, no leading zeros), so a reader
    /// that takes them writes the same text back, up to ASCII case.
    pub well_formed: bool,
}

fn ip_text() -> impl Strategy<Value = (String, u8)> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| (std::net::Ipv4Addr::from(b).to_string(), 32)),
        any::<[u16; 8]>().prop_map(|g| (std::net::Ipv6Addr::from(g).to_string(), 128)),
        // Mostly-zero IPv6 addresses, which compress to `::`, `fe80::1`, …
        (any::<u16>(), any::<u16>(), 0usize..8).prop_map(|(a, b, at)| {
            let mut g = [0u16; 8];
            g[at] = a;
            g[7] = b;
            (std::net::Ipv6Addr::from(g).to_string(), 128)
        }),
    ]
}

/// Damage that makes any IP address text malformed, appended or prefixed.
const IP_JUNK_AFTER: &[&str] = &[" ", "x", "/", ".", ":", "%eth0", "\0", "\u{660}", "\n"];
const IP_JUNK_BEFORE: &[&str] = &[" ", "+", "-", "[", "x", ":::", "\u{feff}"];

/// Address texts of `kind`: well-formed ones, and ones damaged the ways a
/// careless writer or an attacker would (prefix out of range, missing or
/// signed, octets past 255, extra groups, zone ids, junk around).
pub fn address_text(kind: AddressKind) -> BoxedStrategy<AddressText> {
    let ok = |text: String| AddressText {
        text,
        well_formed: true,
    };
    let bad = |text: String| AddressText {
        text,
        well_formed: false,
    };
    match kind {
        AddressKind::Mac => {
            let well = (any::<[u8; 6]>(), any::<bool>()).prop_map(move |(b, upper)| {
                let t = b
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                ok(if upper { t.to_ascii_uppercase() } else { t })
            });
            let groups = prop::collection::vec("[0-9a-f]{2}", 6);
            let damaged = prop_oneof![
                // Five or seven bytes.
                prop::collection::vec("[0-9a-f]{2}", 0..=5).prop_map(|g| g.join(":")),
                prop::collection::vec("[0-9a-f]{2}", 7..9).prop_map(|g| g.join(":")),
                // One byte of one, three or no digits, or not hex.
                (
                    groups.clone(),
                    0usize..6,
                    r"[0-9a-f]|[0-9a-f]{3}|[g-zG-Z +\-.]{1,2}|"
                )
                    .prop_map(|(mut g, at, with)| {
                        g[at] = with;
                        g.join(":")
                    }),
                // Other separators, a trailing one.
                (
                    groups.clone(),
                    prop::sample::select(vec!["-", ".", "", " ", "::"])
                )
                    .prop_map(|(g, sep)| g.join(sep)),
                groups.prop_map(|g| format!("{}:", g.join(":"))),
            ]
            .prop_map(bad);
            prop_oneof![2 => well, 3 => damaged].boxed()
        }
        AddressKind::Ip | AddressKind::IpPrefix => {
            let with_prefix = kind == AddressKind::IpPrefix;
            let well = (ip_text(), any::<u8>()).prop_map(move |((ip, max), len)| {
                ok(if with_prefix {
                    format!("{ip}/{}", len % (max + 1))
                } else {
                    ip
                })
            });
            let whole = move |ip: String, max: u8| {
                if with_prefix {
                    format!("{ip}/{max}")
                } else {
                    ip
                }
            };
            let damaged = prop_oneof![
                // The prefix length out of range, signed, empty, or where
                // none belongs; or missing where one must be.
                (
                    ip_text(),
                    prop_oneof![Just(1u64), Just(100), 1u64..1000, Just(1 << 32)]
                )
                    .prop_map(move |((ip, max), over)| if with_prefix {
                        format!("{ip}/{}", max as u64 + over)
                    } else {
                        format!("{ip}/{}", over % (max as u64 + 1))
                    }),
                (
                    ip_text(),
                    prop::sample::select(vec!["/", "/+8", "/-1", "/ 8", "/0x10"])
                )
                    .prop_map(|((ip, _), p)| format!("{ip}{p}")),
                ip_text().prop_map(move |(ip, max)| if with_prefix {
                    ip
                } else {
                    format!("{ip}/{max}")
                }),
                // An IPv4 octet past 255, or five of them.
                (any::<[u8; 4]>(), 0usize..4, 256u32..1000).prop_map(move |(b, at, big)| {
                    let mut o: Vec<String> = b.iter().map(u8::to_string).collect();
                    o[at] = big.to_string();
                    whole(o.join("."), 8)
                }),
                any::<[u8; 5]>().prop_map(move |b| {
                    let o: Vec<String> = b.iter().map(u8::to_string).collect();
                    whole(o.join("."), 8)
                }),
                // Nine IPv6 groups, a zone id.
                any::<[u16; 9]>().prop_map(move |g| {
                    let g: Vec<String> = g.iter().map(|x| format!("{x:x}")).collect();
                    whole(g.join(":"), 64)
                }),
                any::<u16>().prop_map(move |x| whole(format!("fe80::{x:x}%eth0"), 64)),
                // Junk after or before a well-formed text.
                (ip_text(), any::<u8>(), prop::sample::select(IP_JUNK_AFTER)).prop_map(
                    move |((ip, max), len, junk)| {
                        let t = if with_prefix {
                            format!("{ip}/{}", len % (max + 1))
                        } else {
                            ip
                        };
                        format!("{t}{junk}")
                    }
                ),
                (ip_text(), prop::sample::select(IP_JUNK_BEFORE))
                    .prop_map(move |((ip, max), junk)| format!("{junk}{}", whole(ip, max))),
                Just(String::new()),
            ]
            .prop_map(bad);
            prop_oneof![2 => well, 3 => damaged].boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        json!({"a": [1, {"b": 2}], "c": "x"})
    }

    #[test]
    fn nodes_are_counted_and_found_in_pre_order() {
        let mut v = doc();
        assert_eq!(count_nodes(&v), 6);
        assert_eq!(nth_node(&mut v, &mut 3).cloned(), Some(json!({"b": 2})));
        assert_eq!(nth_node(&mut v, &mut 6), None);
    }

    #[test]
    fn mutations_change_the_node_they_name_modulo_the_count() {
        let mut v = doc();
        apply(
            &mut v,
            &Mutation::Replace {
                at: 6 + 4,
                with: json!(null),
            },
        );
        assert_eq!(v, json!({"a": [1, {"b": null}], "c": "x"}));
        let insert = |at| Mutation::Insert {
            at,
            key: "k".into(),
            with: json!(7),
        };
        apply(&mut v, &insert(3));
        assert_eq!(v, json!({"a": [1, {"b": null, "k": 7}], "c": "x"}));
        let before = v.clone();
        apply(&mut v, &insert(1));
        assert_eq!(v, before, "an array takes no field");
        // 7 nodes now: node 15 % 7 = 1, the array, loses element 15 % 2 = 1.
        apply(&mut v, &Mutation::Remove { at: 15 });
        assert_eq!(v, json!({"a": [1], "c": "x"}));
    }

    #[test]
    fn set_creates_the_last_field_only_under_an_object() {
        let mut v = doc();
        apply(
            &mut v,
            &Mutation::Set {
                path: "/d",
                with: json!(1),
            },
        );
        apply(
            &mut v,
            &Mutation::Set {
                path: "/a/0",
                with: json!(2),
            },
        );
        apply(
            &mut v,
            &Mutation::Set {
                path: "/e/f",
                with: json!(3),
            },
        );
        assert_eq!(v, json!({"a": [2, {"b": 2}], "c": "x", "d": 1}));
    }
}
