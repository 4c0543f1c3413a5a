//! placeholder
#[derive(Clone, Debug)]
pub struct Export;
pub(crate) struct Exported;
