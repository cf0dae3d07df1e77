//! Generated protobuf messages, gRPC clients and servers for the bank's services,
//! plus the encoded descriptor set that server reflection publishes.

/// Descriptor set of every bank proto file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bank_descriptor.bin"));

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("bank.identity.v1");
    }
}

pub mod account {
    pub mod v1 {
        tonic::include_proto!("bank.account.v1");
    }
}

pub mod ledger {
    pub mod v1 {
        tonic::include_proto!("bank.ledger.v1");
    }
}
