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

        use prost::Message;

        /// The type URL a [`TransferBatchErrors`] detail travels under.
        pub const TRANSFER_BATCH_ERRORS_TYPE: &str =
            "type.googleapis.com/bank.ledger.v1.TransferBatchErrors";

        /// The status details (an encoded `google.rpc.Status`) of a refused
        /// batch: its refused items.
        pub fn batch_error_details(
            code: tonic::Code,
            message: &str,
            errors: TransferBatchErrors,
        ) -> Vec<u8> {
            tonic_types::Status {
                code: code as i32,
                message: message.to_owned(),
                details: vec![prost_types::Any {
                    type_url: TRANSFER_BATCH_ERRORS_TYPE.to_owned(),
                    value: errors.encode_to_vec(),
                }],
            }
            .encode_to_vec()
        }

        /// The refused items a status carries, if it is a refused batch's.
        pub fn batch_errors_of(status: &tonic::Status) -> Option<TransferBatchErrors> {
            let details = tonic_types::Status::decode(status.details()).ok()?;
            details
                .details
                .iter()
                .find(|any| any.type_url == TRANSFER_BATCH_ERRORS_TYPE)
                .and_then(|any| TransferBatchErrors::decode(any.value.as_slice()).ok())
        }
    }
}
