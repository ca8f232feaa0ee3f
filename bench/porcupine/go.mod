module kvsvr/bench/porcupine

go 1.19

require github.com/anishathalye/porcupine v0.0.0-00010101000000-000000000000
