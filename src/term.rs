//! TEMPORARY stub: replaced by the validator from the `termcheck` branch.
#![allow(missing_docs)]

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_depth: usize,
    pub max_atoms: usize,
}
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 512,
            max_atoms: 1_000_000,
        }
    }
}
#[derive(Debug, thiserror::Error)]
pub enum TermError {
    #[error("decode: {0}")]
    Decode(String),
}
pub fn validate_versioned(buf: &[u8], _limits: &Limits) -> Result<usize, TermError> {
    let mut r = buf;
    let before = r.len();
    eetf::Term::decode(&mut r).map_err(|e| TermError::Decode(e.to_string()))?;
    Ok(before - r.len())
}
pub fn decode(buf: &[u8], _limits: &Limits) -> Result<(eetf::Term, usize), TermError> {
    let mut r = buf;
    let before = r.len();
    let t = eetf::Term::decode(&mut r).map_err(|e| TermError::Decode(e.to_string()))?;
    Ok((t, before - r.len()))
}
