//! A pack block (FORMAT.md, "Packs and blocks") as readers take it: from a
//! remote (a lying mirror, a cache anyone with the cache directory could
//! write) or from a damaged disk. Nothing panics, and what is accepted
//! holds together: a parsed head's frames lie within the block one after
//! another and their lengths add up to the block's; every chunk lies in one
//! frame; the head parses the same from its own bytes and asks for them
//! when cut short; a decoded block is its frames decoded one by one, with
//! either frame check; and a chunk handed out hashes to its table entry.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nexus_store::Hash;
use nexus_store::pack::{
    BLOCK_HEADER_LEN, BlockHead, ChunkLocation, FrameCheck, ParsedHead, chunk_of, decode_block,
    decode_block_into, decode_frame_into,
};

fn check_head(data: &[u8], head: &BlockHead) {
    let len = data.len();
    assert!(head.head_len >= BLOCK_HEADER_LEN && head.head_len <= len);
    assert!(!head.entries.is_empty() && !head.frames.is_empty());
    let (mut raw_at, mut stored_at) = (0u64, head.head_len);
    for f in &head.frames {
        assert_eq!(u64::from(f.raw_start), raw_at);
        assert_eq!(f.stored_at as usize, stored_at);
        assert!(f.stored_range().end <= len);
        if !f.compressed {
            assert_eq!(f.stored_len, f.raw_len);
        }
        raw_at += u64::from(f.raw_len);
        stored_at = f.stored_range().end;
    }
    assert_eq!(raw_at, u64::from(head.raw_len));
    assert_eq!(stored_at, len);
    let mut inner = 0u64;
    for e in &head.entries {
        assert_eq!(u64::from(e.inner), inner);
        inner += u64::from(e.len);
        assert!(
            head.frame_of(e.inner, e.len).is_some(),
            "a chunk across frames"
        );
    }
    assert_eq!(inner, u64::from(head.raw_len));
    // Read in two steps (the head first, as the remote source does): the
    // same head from its own bytes, a request for them from fewer.
    match BlockHead::parse(&data[..head.head_len], len) {
        Ok(ParsedHead::Head(again)) => {
            assert_eq!(again.entries, head.entries);
            assert_eq!(again.frames, head.frames);
        }
        _ => panic!("the head does not parse from its own bytes"),
    }
    if head.head_len > BLOCK_HEADER_LEN {
        match BlockHead::parse(&data[..head.head_len - 1], len) {
            Ok(ParsedHead::NeedBytes(n)) => assert_eq!(n, head.head_len),
            _ => panic!("a cut head does not ask for its bytes"),
        }
    }
}

fn location(hash: Hash, inner: u32, len: u32, block_len: usize) -> ChunkLocation {
    ChunkLocation {
        hash,
        pack: Arc::from("fuzz.pack"),
        offset: 8,
        block_len: block_len as u32,
        inner,
        len,
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = BlockHead::parse(data, data.len());
    let decoded = decode_block(data);
    let head = match parsed {
        Ok(ParsedHead::Head(head)) => head,
        Ok(ParsedHead::NeedBytes(n)) => panic!("asks for {n} bytes of a whole block"),
        Err(_) => {
            assert!(
                decoded.is_err(),
                "a block decodes whose head does not parse"
            );
            return;
        }
    };
    check_head(data, &head);

    // Every frame on its own, with both checks.
    let mut frames = Vec::new();
    for f in &head.frames {
        let stored = &data[f.stored_range()];
        let checked = decode_frame_into(f, stored, vec![7; 3], FrameCheck::Checksum);
        let unchecked = decode_frame_into(f, stored, Vec::new(), FrameCheck::ChunkHashes);
        if let Ok(bytes) = &unchecked {
            assert_eq!(bytes.len(), f.raw_len as usize);
        }
        if let Ok(bytes) = &checked {
            assert_eq!(bytes.len(), f.raw_len as usize);
            assert_eq!(
                unchecked.as_ref().ok(),
                Some(bytes),
                "a checksum only refuses"
            );
        }
        frames.push((f, checked.ok(), unchecked.ok()));
    }
    let whole: Option<Vec<u8>> = frames
        .iter()
        .map(|(_, checked, _)| checked.clone())
        .collect::<Option<Vec<_>>>()
        .map(|parts| parts.concat());
    let block = match decoded {
        Ok(block) => block,
        Err(_) => {
            assert!(
                whole.is_none(),
                "every frame decodes but the block does not"
            );
            return;
        }
    };
    assert_eq!(block.data.len(), head.raw_len as usize);
    assert_eq!(block.entries, head.entries);
    assert_eq!(whole.as_deref(), Some(&block.data[..]));
    let again = decode_block_into(data, vec![1; 100]).expect("decodes twice");
    assert_eq!(again.data, block.data);

    // Each listed chunk, from the whole block and from its frame; and one
    // place off, where the table lists no such chunk.
    for e in &head.entries {
        let loc = location(e.hash, e.inner, e.len, data.len());
        let from_block = block.chunk(&loc).ok();
        if let Some(bytes) = from_block {
            assert_eq!(Hash::of(bytes), e.hash);
            let at = e.inner as usize;
            assert_eq!(bytes, &block.data[at..at + e.len as usize]);
        }
        let f = head.frame_of(e.inner, e.len).expect("checked above");
        let (frame, _, unchecked) = &frames[f];
        let bytes = unchecked.as_deref().expect("the block decoded");
        let from_frame = chunk_of(&head.entries, bytes, frame.raw_start, &loc).ok();
        assert_eq!(from_frame, from_block);
        let off = location(e.hash, e.inner.wrapping_add(1), e.len, data.len());
        if let Ok(bytes) = block.chunk(&off) {
            assert_eq!(Hash::of(bytes), e.hash);
        }
    }
});
