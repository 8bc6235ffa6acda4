"""Cases (question + gold diagnosis), prompt construction and built-in data."""
