//! HPACK (RFC 7541) of one direction, with `loona-hpack`: each direction has its own dynamic
//! table, which only stays right if every header block of that direction is decoded in
//! order. A block that cannot be decoded (bytes of it not captured, lost in a gap, or not
//! valid HPACK) leaves the table in an unknown state: from then on the direction is decoded
//! with what its table gained since ([`PartialTable`]): static-table indices and literals
//! decode the same whatever the table holds (many servers, nginx among them, encode their
//! responses that way), entries inserted after the loss are learnt, and a block that names
//! an entry from before it is read in part and flagged ([`Fields::unknown`]): what it may be
//! used for is the parser's call, since a wrong table would name the wrong route.
use loona_hpack::Decoder;

use super::{
    headers::{DEFAULT_TABLE_SIZE, Fields, MAX_TABLE_SIZE, keep},
    partial_table::PartialTable,
};

/// The HPACK decoding context of one direction.
pub struct Hpack {
    decoder: Decoder<'static>,
    /// Set when a block was lost or undecodable: the dynamic table is unknown, and only what
    /// it gained since is known.
    partial: Option<Box<PartialTable>>,
}

impl std::fmt::Debug for Hpack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hpack")
            .field("partial", &self.partial)
            .finish_non_exhaustive()
    }
}

impl Default for Hpack {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(DEFAULT_TABLE_SIZE);
        Self {
            decoder,
            partial: None,
        }
    }
}

impl Hpack {
    #[cfg(test)]
    pub fn is_poisoned(&self) -> bool {
        self.partial.is_some()
    }

    /// The dynamic entries learnt since the table became unknown.
    #[cfg(test)]
    pub fn learnt(&self) -> Option<usize> {
        self.partial.as_ref().map(|p| p.learnt())
    }

    /// The table's state is no longer known (a block was lost): what was learnt since an
    /// earlier loss is unknown again too (the lost block may have inserted entries).
    pub fn poison(&mut self) {
        self.partial = Some(Box::new(PartialTable::new()));
    }

    /// The decoding endpoint announced SETTINGS_HEADER_TABLE_SIZE = `size`: the encoder of
    /// this direction may now resize the table up to it (with a size update inside a block;
    /// the decoder never resizes on its own). Lowering takes effect through the encoder's
    /// mandatory size update, so the bound kept is never below the initial size: a block the
    /// encoder sent before it saw the SETTINGS still decodes.
    pub fn allow_table_size(&mut self, size: u32) {
        let size = (size as usize).clamp(DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE);
        self.decoder.set_max_allowed_table_size(size);
    }

    /// Decodes one complete header block. None when the block does not decode (which makes
    /// the table unknown); [`Fields::unknown`] when it names a dynamic-table entry the agent
    /// does not know.
    pub fn decode(&mut self, block: &[u8]) -> Option<Fields> {
        if let Some(partial) = self.partial.as_mut() {
            return partial.decode(block);
        }
        let mut fields = Fields::default();
        let result = self
            .decoder
            .decode_with_cb(block, |name, value| keep(&mut fields, &name, &value));
        match result {
            Ok(()) => Some(fields),
            Err(_) => {
                self.poison();
                None
            }
        }
    }
}
