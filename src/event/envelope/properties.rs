//! Property tests of [`decode_envelope`] against a reference reading of the envelope rules.
//!
//! The decoder is a hand-written streaming visitor, tuned to skip what routing does not need; the
//! reference here is the plain way to say the same rules: parse the whole body into a tree, then
//! look things up. The tree keeps an object's entries as a list, not a map, because the rules
//! refuse duplicate routing keys and `serde_json::Value` would silently keep only the last one.
//! Every generated body, valid or broken, must get the same answer from both, and none may
//! panic the decoder.

use proptest::prelude::*;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{decode_envelope, Envelope, MAX_DEPTH};

/// A JSON value with every object entry kept in order, duplicates included.
#[derive(Clone, Debug)]
enum Raw {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(String),
    Arr(Vec<Raw>),
    Obj(Vec<(String, Raw)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw::U64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::I64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::F64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Raw::Arr(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Raw::Obj(entries))
            }
        }
        deserializer.deserialize_any(RawVisitor)
    }
}

impl Raw {
    /// Nesting of arrays and objects, the value itself included.
    fn depth(&self) -> usize {
        match self {
            Raw::Arr(items) => 1 + items.iter().map(Raw::depth).max().unwrap_or(0),
            Raw::Obj(entries) => 1 + entries.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Every value stored under `key`, if this is an object.
    fn all(&self, key: &str) -> Option<Vec<&Raw>> {
        match self {
            Raw::Obj(entries) => Some(
                entries
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v)
                    .collect(),
            ),
            _ => None,
        }
    }

    /// A positive id: a positive integer, or a non-empty string of ASCII digits that fits a u64.
    fn id(&self) -> Option<u64> {
        let id = match self {
            Raw::U64(n) => Some(*n),
            Raw::I64(n) => u64::try_from(*n).ok(),
            Raw::Str(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => s.parse().ok(),
            _ => None,
        };
        id.filter(|&n| n > 0)
    }

    /// JSON text for this tree, duplicates and all, in one of two spacings.
    fn write(&self, out: &mut String, spaced: bool) {
        let sep = if spaced { ", " } else { "," };
        match self {
            Raw::Null => out.push_str("null"),
            Raw::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Raw::U64(n) => out.push_str(&n.to_string()),
            Raw::I64(n) => out.push_str(&n.to_string()),
            Raw::F64(x) => out.push_str(&serde_json::to_string(x).unwrap_or_default()),
            Raw::Str(s) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
            Raw::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    item.write(out, spaced);
                }
                out.push(']');
            }
            Raw::Obj(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    out.push_str(&serde_json::to_string(key).unwrap_or_default());
                    out.push(':');
                    value.write(out, spaced);
                }
                out.push('}');
            }
        }
    }
}

/// The envelope rules, read off the whole tree: `None` where the decoder must refuse the body.
fn reference(body: &[u8]) -> Option<Envelope> {
    let top: Raw = serde_json::from_slice(body).ok()?;
    if top.depth() > MAX_DEPTH {
        return None;
    }
    let event = match top.all("event")?.as_slice() {
        [Raw::Str(event)] if !event.is_empty() => event.clone(),
        _ => return None,
    };
    let account_id = match top.all("account")?.as_slice() {
        [account] => match account.all("id")?.as_slice() {
            [id] => id.id()?,
            _ => return None,
        },
        _ => return None,
    };
    let inbox = optional_id(&top, "inbox", "id")?;
    let conversation = optional_id(&top, "conversation", "inbox_id")?;
    Some(Envelope {
        event,
        account_id,
        inbox_id: inbox.or(conversation),
    })
}

/// `Some(id)` for an optional holder: the outer `None` when the holder or its id key repeats.
fn optional_id(top: &Raw, holder: &str, key: &str) -> Option<Option<u64>> {
    match top.all(holder)?.as_slice() {
        [] => Some(None),
        [holder] => match holder.all(key).as_deref() {
            None | Some([]) => Some(None),
            Some([id]) => Some(id.id()),
            Some(_) => None,
        },
        _ => None,
    }
}

const KEYS: [&str; 8] = [
    "event",
    "account",
    "id",
    "inbox",
    "conversation",
    "inbox_id",
    "meta",
    "\u{e9}v\u{e9}nement",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(&KEYS[..]).prop_map(str::to_owned),
        1 => "[a-z_]{0,6}",
    ]
}

/// Scalars chosen to sit on the rules' edges: ids that are zero, negative, signed, spaced,
/// exponents, one past u64; event names empty and not.
fn scalar() -> impl Strategy<Value = Raw> {
    const TEXTS: [&str; 13] = [
        "",
        "0",
        "1",
        "42",
        "007",
        "+1",
        "-1",
        " 1",
        "1e3",
        "1.0",
        "18446744073709551615",
        "18446744073709551616",
        "message_created",
    ];
    prop_oneof![
        Just(Raw::Null),
        any::<bool>().prop_map(Raw::Bool),
        prop::sample::select(&[0, 1, 2, 7, u64::MAX][..]).prop_map(Raw::U64),
        any::<u64>().prop_map(Raw::U64),
        prop::sample::select(&[-1, -7, i64::MIN][..]).prop_map(Raw::I64),
        prop::sample::select(&[0.0, 1.0, -0.5, 1e300][..]).prop_map(Raw::F64),
        prop::sample::select(&TEXTS[..]).prop_map(|s| Raw::Str(s.to_owned())),
        ".{0,8}".prop_map(Raw::Str),
    ]
}

fn value() -> impl Strategy<Value = Raw> {
    scalar().prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Raw::Arr),
            prop::collection::vec((key(), inner), 0..5).prop_map(Raw::Obj),
        ]
    })
}

/// An id that is valid more often than not.
fn id_value() -> impl Strategy<Value = Raw> {
    prop_oneof![
        2 => (1..=u64::MAX).prop_map(Raw::U64),
        1 => "0{0,2}[1-9][0-9]{0,5}".prop_map(Raw::Str),
        2 => scalar(),
    ]
}

/// Keys that sit beside the routing keys: mostly harmless, sometimes a routing key again.
fn other_key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(&["id", "inbox_id", "meta", "name", "x"][..]).prop_map(str::to_owned),
        1 => key(),
    ]
}

/// How many times a routing key appears: mostly once, so that many bodies are valid.
fn times() -> impl Strategy<Value = usize> {
    prop_oneof![12 => Just(1usize), 2 => Just(0usize), 1 => Just(2usize)]
}

/// An object `{key: id, …}` holding the id key `times` times among noise.
fn holder(id_key: &'static str) -> impl Strategy<Value = Raw> {
    let ids = prop::collection::vec(id_value(), 0..3);
    (
        times(),
        ids,
        prop::collection::vec((other_key(), value()), 0..3),
    )
        .prop_map(move |(n, ids, noise)| {
            let mut entries = noise;
            entries.extend(
                ids.into_iter()
                    .chain(std::iter::repeat(Raw::U64(3)))
                    .take(n)
                    .map(|id| (id_key.to_owned(), id)),
            );
            entries
        })
        .prop_shuffle()
        .prop_map(Raw::Obj)
}

/// A top-level object shaped like an event, with every routing key present zero, one or two
/// times, holding right or wrong values, in any order.
fn envelope_like() -> impl Strategy<Value = Raw> {
    let event = prop_oneof![
        4 => "[a-z_]{1,12}".prop_map(Raw::Str),
        1 => scalar(),
    ];
    let account = prop_oneof![5 => holder("id"), 1 => value()];
    let inbox = prop_oneof![3 => holder("id"), 1 => value()];
    let conversation = prop_oneof![3 => holder("inbox_id"), 1 => value()];
    (
        (times(), event),
        (times(), account),
        (times(), inbox),
        (times(), conversation),
        prop::collection::vec((other_key(), value()), 0..4),
    )
        .prop_map(|(event, account, inbox, conversation, noise)| {
            let mut entries = noise;
            for (name, (n, value)) in [
                ("event", event),
                ("account", account),
                ("inbox", inbox),
                ("conversation", conversation),
            ] {
                entries.extend(std::iter::repeat_n((name.to_owned(), value), n));
            }
            entries
        })
        .prop_shuffle()
        .prop_map(Raw::Obj)
}

fn text(raw: &Raw, spaced: bool) -> Vec<u8> {
    let mut out = String::new();
    raw.write(&mut out, spaced);
    out.into_bytes()
}

/// One edit of a body: the kinds of damage a buggy publisher or a broken transport does.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    Delete(usize),
    Insert(usize, u8),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = prop::sample::select(
        &[
            b'{', b'}', b'[', b']', b'"', b',', b':', b'\\', b'0', b'-', b'e', b' ', 0xff, 0xc3,
            0x00,
        ][..],
    );
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), bytes).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = body.len();
        match *mutation {
            Mutation::FlipBit(at, bit) if len > 0 => body[at % len] ^= 1 << bit,
            Mutation::Delete(at) if len > 0 => {
                body.remove(at % len);
            }
            Mutation::Insert(at, byte) => body.insert(at % (len + 1), byte),
            Mutation::Truncate(at) => body.truncate(at % (len + 1)),
            _ => {}
        }
    }
    body
}

/// A valid envelope with `extra` nested `depth` levels below the top-level object.
fn nested(depth: usize, object_every: usize) -> Vec<u8> {
    let mut value = String::from("1");
    for level in 0..depth {
        value = if object_every > 0 && level % object_every == 0 {
            format!(r#"{{"k":{value}}}"#)
        } else {
            format!("[{value}]")
        };
    }
    format!(r#"{{"event":"e","account":{{"id":1}},"extra":{value}}}"#).into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_decoded_as_the_reference_reads_them(body in prop::collection::vec(any::<u8>(), 0..96)) {
        prop_assert_eq!(decode_envelope(&body).ok(), reference(&body));
    }

    #[test]
    fn arbitrary_json_is_decoded_as_the_reference_reads_it(raw in value(), spaced in any::<bool>()) {
        let body = text(&raw, spaced);
        prop_assert_eq!(decode_envelope(&body).ok(), reference(&body));
    }

    #[test]
    fn event_shaped_objects_are_decoded_as_the_reference_reads_them(raw in envelope_like(), spaced in any::<bool>()) {
        let body = text(&raw, spaced);
        prop_assert_eq!(decode_envelope(&body).ok(), reference(&body));
    }

    #[test]
    fn mutated_events_are_decoded_as_the_reference_reads_them(
        raw in envelope_like(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let body = mutate(text(&raw, false), &mutations);
        prop_assert_eq!(decode_envelope(&body).ok(), reference(&body));
    }

    #[test]
    fn nesting_is_accepted_up_to_the_limit_only(depth in 0usize..200, object_every in 0usize..4) {
        let body = nested(depth, object_every);
        let decoded = decode_envelope(&body).ok();
        prop_assert_eq!(decoded.is_some(), depth < MAX_DEPTH);
        prop_assert_eq!(decoded, reference(&body));
    }
}

/// The generators must produce valid envelopes often enough for "same answer" to mean
/// something; a strategy that only ever made garbage would pass the properties trivially.
#[test]
fn generated_events_are_often_valid() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = envelope_like();
    let total = 400;
    let mut valid = 0;
    for _ in 0..total {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            continue;
        };
        if reference(&text(&tree.current(), false)).is_some() {
            valid += 1;
        }
    }
    assert!(
        valid * 10 >= total,
        "only {valid} of {total} generated events are valid"
    );
    assert!(
        valid * 10 <= total * 9,
        "{valid} of {total} generated events are valid"
    );
}
