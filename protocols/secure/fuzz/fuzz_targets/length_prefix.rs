//! The length-prefixed message reader: never panics, never returns more than the cap,
//! never reads past the input.
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use p2pnode_secure::stream::read_length_prefixed;

fuzz_target!(|data: &[u8]| {
    let Some((cap, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes(*cap));
    let mut io = Cursor::new(stream);
    let mut consumed = 0;
    block_on(async {
        while let Ok(msg) = read_length_prefixed(&mut io, max).await {
            assert!(msg.len() <= max);
            consumed += 4 + msg.len();
            assert_eq!(&stream[consumed - msg.len()..consumed], msg.as_slice());
        }
    });
    assert!(consumed <= stream.len());
});
