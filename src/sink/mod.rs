//! The streaming sink: artifacts are serialized into memory (never to disk), hashed while
//! bytes arrive, and handed to the upload pipeline as soon as they close.

pub mod commit;
pub mod safetensors;

pub use self::safetensors::{Artifact, ArtifactWriter, TensorDtype, TensorSpec, WriteError};
pub use commit::{
    CommitPolicy, Committable, Committer, SinkEvent, SinkEvents, SinkTotals, UploadJob,
};
