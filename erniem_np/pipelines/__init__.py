"""Tasks end to end, from text to answer: encode, classify, tag, qa, choose and UIE-M extract."""
