//! The one integration-test binary (one link on a 2-core machine). Each module tests one
//! capability through the front door: the `hubsweep` binary or the public library API.

mod analysis;
mod card;
mod common;
mod families;
mod hub;
mod model;
mod plan;
mod report_chromium;
mod reproduce;
mod reproduce_pins;
mod run;
mod sink;
mod slurm;
mod slurm_follow;
mod spec;
mod spectro;
mod spectro_smollm2;
mod verify;
