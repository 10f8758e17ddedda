"""OTT-Vid, one file per stage: spatial -> mass -> transport -> budget -> merge (paper Sec. 3)."""
