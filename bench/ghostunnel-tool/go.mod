module ghostunneltool

go 1.26.6
