//! hubsweep (skeleton)
#![deny(missing_docs)]
