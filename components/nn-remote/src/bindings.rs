//! The component's bindings, generated from the WIT: what it exports (wasi:nn and
//! edgeinfer:nn/infer) and imports (outbound HTTP).

wit_bindgen::generate!({
    world: "nn-provider",
    path: "../../wit",
    generate_all,
});
