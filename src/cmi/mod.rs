pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("cmi.v1");
}
