"""`python -m spanbert_train …` and `torchrun -m spanbert_train …`: the same CLI as `spanbert-train`."""

from spanbert_train.cli import main

if __name__ == "__main__":
    main()
