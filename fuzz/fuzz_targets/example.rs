//! `tf.train.Example` decoding; whatever decodes re-encodes to bytes that decode to the same Example.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vadapt::io::rlds::example::Example;
use vadapt::Location;

fuzz_target!(|data: &[u8]| {
    if let Ok(ex) = Example::decode_at(data, &Location::none()) {
        let again = ex.to_bytes();
        let back = Example::decode_at(&again, &Location::none()).expect("re-encoded Example decodes");
        // Compare encodings, not values: NaN floats are equal bit for bit but not under PartialEq.
        assert_eq!(back.to_bytes(), again);
    }
});
