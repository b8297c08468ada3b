//! The trainer: Meta Pseudo Labels on libtorch.
