//! The tokenizer component on its own, under plain wasmtime (no edgeinfer host): exactly the
//! ids, type ids, attention masks and byte offsets Python `tokenizers` gives.

mod common;

use std::sync::OnceLock;

use common::{reference, repo_root};
use wasmtime::component::{Component, Linker, ResourceAny, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "edgeinfer:text/tokenizer",
});

use exports::edgeinfer::text::tokenize::{EncodeOptions, Encoding, Error, TruncationDirection};

struct State {
    table: ResourceTable,
    wasi: WasiCtx,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

struct Harness {
    store: Store<State>,
    bindings: Tokenizer,
}

impl Harness {
    fn new() -> Harness {
        let (engine, component) = compiled();
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
        let state = State { table: ResourceTable::new(), wasi: WasiCtxBuilder::new().build() };
        let mut store = Store::new(engine, state);
        let bindings = Tokenizer::instantiate(&mut store, component, &linker).unwrap();
        Harness { store, bindings }
    }

    fn tokenizer(&mut self, json: &[u8]) -> Result<ResourceAny, Error> {
        let api = self.bindings.edgeinfer_text_tokenize().tokenizer();
        api.call_from_json(&mut self.store, json).unwrap()
    }

    fn encode(&mut self, tokenizer: ResourceAny, texts: &[String], options: EncodeOptions) -> Vec<Encoding> {
        let api = self.bindings.edgeinfer_text_tokenize().tokenizer();
        api.call_encode_batch(&mut self.store, tokenizer, texts, options).unwrap().unwrap()
    }
}

/// Compiling the component takes seconds: once per test binary.
fn compiled() -> &'static (Engine, Component) {
    static COMPILED: OnceLock<(Engine, Component)> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let wasm = repo_root().join("target/wasm32-wasip2/release/tokenizer.wasm");
        assert!(wasm.is_file(), "{} missing: run `edgeinfer build` (scripts/test does)", wasm.display());
        let engine = Engine::default();
        let component = Component::from_file(&engine, &wasm).unwrap();
        (engine, component)
    })
}

fn tokenizer_json() -> Vec<u8> {
    let path = repo_root().join("models/all-minilm-l6-v2/tokenizer.json");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `edgeinfer fetch`)", path.display()))
}

const PLAIN: EncodeOptions = EncodeOptions {
    add_special_tokens: true,
    max_length: None,
    truncation_direction: TruncationDirection::Right,
    pad_to_longest: false,
};

/// Cut at `max` tokens from `direction`, padded to the longest.
fn cut(max: u32, direction: TruncationDirection) -> EncodeOptions {
    EncodeOptions {
        add_special_tokens: true,
        max_length: Some(max),
        truncation_direction: direction,
        pad_to_longest: true,
    }
}

#[test]
fn ids_match_python_tokenizers_exactly() {
    let mut h = Harness::new();
    let tokenizer = h.tokenizer(&tokenizer_json()).unwrap();
    let cases = reference("tokens.json");
    let cases = cases.as_array().unwrap();
    let texts: Vec<String> = cases.iter().map(|c| c["text"].as_str().unwrap().to_string()).collect();
    let encodings = h.encode(tokenizer, &texts, PLAIN);
    assert_eq!(encodings.len(), cases.len());
    for (case, e) in cases.iter().zip(&encodings) {
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let type_ids: Vec<u32> = serde_json::from_value(case["type_ids"].clone()).unwrap();
        let mask: Vec<u32> = serde_json::from_value(case["attention_mask"].clone()).unwrap();
        let offsets: Vec<(u32, u32)> = serde_json::from_value(case["offsets"].clone()).unwrap();
        let text = &case["text"];
        assert_eq!(e.ids, ids, "ids of {text}");
        assert_eq!(e.type_ids, type_ids, "type ids of {text}");
        assert_eq!(e.attention_mask, mask, "attention mask of {text}");
        assert_eq!(e.offsets, offsets, "byte offsets of {text}");
        assert_eq!(e.length_before_truncation as usize, ids.len());
    }
}

#[test]
fn truncation_and_padding_are_per_call() {
    let mut h = Harness::new();
    let tokenizer = h.tokenizer(&tokenizer_json()).unwrap();
    let texts = vec![
        "one two three four five six seven eight nine ten eleven twelve".to_string(),
        "short".to_string(),
    ];
    let e = h.encode(tokenizer, &texts, cut(8, TruncationDirection::Right));
    assert_eq!(e[0].ids.len(), 8, "truncated to max-length");
    assert_eq!(e[0].ids[0], 101, "[CLS] kept");
    assert_eq!(e[0].ids[7], 102, "[SEP] kept at the end");
    assert_eq!(e[0].length_before_truncation, 14);
    assert_eq!(e[1].ids.len(), 8, "padded to the longest of the batch");
    assert_eq!(e[1].ids[3..], [0, 0, 0, 0, 0]);
    assert_eq!(e[1].attention_mask, [1, 1, 1, 0, 0, 0, 0, 0]);
    assert_eq!(e[1].length_before_truncation, 3);
    // The file's own fixed padding (128) is gone: a plain call pads nothing.
    let plain = h.encode(tokenizer, &texts[1..], PLAIN);
    assert_eq!(plain[0].ids.len(), 3);
    // Cutting from the left keeps the end of the text, special tokens still at both ends.
    let full = h.encode(tokenizer, &texts[..1], PLAIN);
    let left = h.encode(tokenizer, &texts[..1], cut(8, TruncationDirection::Left));
    assert_eq!(left[0].ids.len(), 8);
    assert_eq!((left[0].ids[0], left[0].ids[7]), (101, 102));
    assert_eq!(left[0].ids[1..7], full[0].ids[full[0].ids.len() - 7..full[0].ids.len() - 1]);
    assert_eq!(left[0].length_before_truncation, 14);
}

#[test]
fn tokens_carry_their_spelling_and_decode_inverts_ids() {
    let mut h = Harness::new();
    let tokenizer = h.tokenizer(&tokenizer_json()).unwrap();
    let api = h.bindings.edgeinfer_text_tokenize().tokenizer();
    let text = "Hello world, tokenizing!";
    let tokens = api.call_tokens(&mut h.store, tokenizer, text, true).unwrap().unwrap();
    let plain = h.encode(tokenizer, &[text.to_string()], PLAIN);
    let api = h.bindings.edgeinfer_text_tokenize().tokenizer();
    assert_eq!(tokens.iter().map(|t| t.id).collect::<Vec<_>>(), plain[0].ids, "the ids encode-batch gives");
    assert_eq!(tokens.iter().map(|t| t.offsets).collect::<Vec<_>>(), plain[0].offsets);
    let spelled: Vec<(&str, bool)> = tokens.iter().map(|t| (t.text.as_str(), t.special)).collect();
    assert_eq!(
        spelled,
        [
            ("[CLS]", true),
            ("hello", false),
            ("world", false),
            (",", false),
            ("token", false),
            ("##izing", false),
            ("!", false),
            ("[SEP]", true)
        ]
    );
    let ids = &plain[0].ids;
    let decoded = api.call_decode(&mut h.store, tokenizer, ids, true).unwrap().unwrap();
    assert_eq!(decoded, "hello world, tokenizing!");
    let with_special = api.call_decode(&mut h.store, tokenizer, ids, false).unwrap().unwrap();
    assert_eq!(with_special, "[CLS] hello world, tokenizing! [SEP]");
    assert_eq!(api.call_vocab_size(&mut h.store, tokenizer).unwrap(), 30522);
    let unknown = api.call_decode(&mut h.store, tokenizer, &[101, 30522], false).unwrap();
    assert!(matches!(unknown, Err(Error::InvalidOptions(m)) if m.contains("30522")));
}

#[test]
fn bad_input_is_a_wit_error_not_a_trap() {
    let mut h = Harness::new();
    assert!(matches!(h.tokenizer(b"{not json"), Err(Error::InvalidTokenizer(_))));
    let tokenizer = h.tokenizer(&tokenizer_json()).unwrap();
    let api = h.bindings.edgeinfer_text_tokenize().tokenizer();
    let zero = cut(0, TruncationDirection::Right);
    let result = api.call_encode_batch(&mut h.store, tokenizer, &["x".to_string()], zero).unwrap();
    assert!(matches!(result, Err(Error::InvalidOptions(_))));
    let pad = api.call_pad_id(&mut h.store, tokenizer).unwrap();
    assert_eq!(pad, 0);
}
