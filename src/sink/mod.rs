//! The streaming sink: artifacts are serialized into memory (never to disk), hashed while
//! bytes arrive, and handed to the upload pipeline as soon as they close. [`Sink::start`]
//! starts it, [`Sink::finish`] closes it (see [`front`]).

pub mod commit;
pub mod front;
pub mod safetensors;
pub mod upload;

pub use self::safetensors::{Artifact, ArtifactWriter, TensorDtype, TensorSpec, WriteError};
pub use commit::{
    CommitPolicy, Committable, Committer, SinkEvent, SinkEvents, SinkTotals, UploadJob,
};
pub use front::{FinalIndex, Finished, Sink, SinkError, SinkSenders, SinkSettings};
pub use upload::UploadTotals;
