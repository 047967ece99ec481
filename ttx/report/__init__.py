"""`ttx report`: one self-contained HTML page per run or comparison, built from `ttx score`'s
numbers (ttx.score.score), to look at traces, votes, search trees and scaling."""
