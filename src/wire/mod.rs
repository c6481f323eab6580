pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/meshmq.wire.rs"));
}
