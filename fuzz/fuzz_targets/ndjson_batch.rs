//! The NDJSON batch reader of `POST /v1/client-tokens:batch`: `service::batch::LineSplitter`
//! cutting the request body into lines as its chunks arrive, then `service::tokens::parse`
//! reading each line as a `ClientTokenRequest`, as `batch::validate` does.
//!
//! The input is a small script, so that chunk boundaries and lines over `LINE_LIMIT` (16 KiB) are
//! in reach of short inputs: byte 0xFF ends a chunk, 0xFE n stands for n × 64 bytes of `x`, every
//! other byte is itself.
//!
//! Checked: however the body is cut into chunks, the lines are exactly those of a reference
//! model — the body split at every `\n`, leading ASCII white space dropped from each line, empty
//! lines dropped, a line longer than `LINE_LIMIT` replaced by the marker for a refused line; so
//! nothing is lost, duplicated, reordered or joined across a newline. A line that does not parse
//! is answered with a `bad_request` whose message stays short (serde's message, which quotes the
//! input, is clipped to 200 characters), whatever the line holds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sitesign::policy::ClientTokenRequest;
use sitesign::service::batch::{LINE_LIMIT, LineSplitter};
use sitesign::service::error::ApiError;
use sitesign::service::tokens::parse;

/// Longest message of a line that does not parse, characters: "the body is not valid: ", 200
/// characters of serde's message and "…", " at line L column C".
const LONGEST_MESSAGE: usize = 23 + 201 + 64;

/// The body and its chunks, from the script.
fn body_and_chunks(script: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let (mut body, mut ends) = (Vec::new(), Vec::new());
    let mut bytes = script.iter();
    while let Some(&b) = bytes.next() {
        match b {
            0xFF => ends.push(body.len()),
            0xFE => {
                let n = bytes.next().copied().unwrap_or(0);
                body.resize(body.len() + usize::from(n) * 64, b'x');
            }
            _ => body.push(b),
        }
    }
    ends.push(body.len());
    (body, ends)
}

/// What the splitter must produce for `body`: one entry per non-blank line, `None` for a line
/// over the limit.
fn model(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    body.split(|b| *b == b'\n')
        .map(|line| line.trim_ascii_start())
        .filter(|line| !line.is_empty())
        .map(|line| (line.len() <= LINE_LIMIT).then(|| line.to_vec()))
        .collect()
}

fuzz_target!(|script: &[u8]| {
    let (body, ends) = body_and_chunks(script);
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    let mut start = 0;
    for end in ends {
        lines.extend(splitter.push(&body[start..end]));
        start = end;
    }
    lines.extend(splitter.finish());
    assert!(lines == model(&body), "the splitter's lines differ from the model's");

    for line in lines.into_iter().flatten() {
        if let Err(e) = parse::<ClientTokenRequest>(&line) {
            assert!(matches!(e, ApiError::BadRequest(_)), "a line that does not parse answered {e:?}");
            let message = e.to_string();
            let n = message.chars().count();
            assert!(n <= LONGEST_MESSAGE, "a {n}-character message echoes too much of the line: {message}");
        }
    }
});
