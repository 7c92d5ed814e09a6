//! The engine API's request parser on arbitrary requests: every method, path, query and body must
//! become a call or an error (a 4xx answer), never a panic.
//!
//! The input is a request in a readable form, so the corpus can be written by hand:
//! `METHOD PATH[?QUERY]`, a newline, then the body (e.g. `POST /v1/containers/web/stop\n{"timeout":3}`).
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (method, target) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (&b"GET"[..], line),
    };
    // hyper hands the API a valid method and a UTF-8 path and query; anything else never reaches it.
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let _ = slipway_engine::api::parse(&method, path, query, body);
});
