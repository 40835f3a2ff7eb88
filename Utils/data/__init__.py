"""The data: datasets loaded into memory (datasets.py), prepared or imported once into the data root
(prepare.py, from the source formats of image_files.py), text corpora (text.py), the clients' partitions
(partition.py), and the errors a missing or damaged dataset raises (errors.py). Nothing here knows of the
roles, the transport or the algorithm."""
