"""The model: backbones (one file per family), the cut, the new head, and the towers built from them."""
