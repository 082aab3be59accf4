"""``thread-observer timeline``: the records (model), the lanes built from them (lanes), the
probe and recorder (recorder), the command line (command) and the pictures (render)."""
