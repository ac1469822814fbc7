#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/uio.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static double cpu(){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_utime.tv_sec*1e6+r.ru_utime.tv_usec+r.ru_stime.tv_sec*1e6+r.ru_stime.tv_usec;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
  int mode=atoi(argv[1]); size_t al=argc>4?atoi(argv[4]):512; int n=atoi(argv[2]); const char*path=argv[3]; size_t rec=2700;
  size_t seg=16<<20;
  int fd=open(path,O_RDWR|O_CREAT|O_TRUNC,0600);
  char*z=aligned_alloc(4096,1<<20); memset(z,0,1<<20);
  for(size_t o=0;o<seg;o+=1<<20) pwrite(fd,z,1<<20,o);
  fsync(fd); close(fd);
  int flags=O_RDWR; if(mode==1) flags|=O_DIRECT; if(mode==2) flags|=O_DIRECT|O_DSYNC;
  fd=open(path,flags);
  char*buf=aligned_alloc(4096,1<<16); memset(buf,'x',1<<16);
  double*lat=malloc(n*sizeof(double)); size_t off=0; double c0=cpu(), t0=now();
  for(int i=0;i<n;i++){
    double s=now();
    if(mode==0){ pwrite(fd,buf,rec,off); fdatasync(fd); off+=rec; } else if(mode==3){ struct iovec v={buf,rec}; pwritev2(fd,&v,1,off,RWF_DSYNC); off+=rec; }
    else { size_t a=off&~(al-1); size_t e=(off+rec+al-1)&~(al-1); if(pwrite(fd,buf,e-a,a)!=(ssize_t)(e-a)){perror("pwrite");return 1;} if(mode==1) fdatasync(fd); off+=rec; }
    lat[i]=now()-s;
    if(off+rec+4096>seg) off=0;
  }
  double wall=now()-t0, c=cpu()-c0;
  qsort(lat,n,sizeof(double),cmp);
  printf("mode %d: p50 %.1f us p99 %.1f us, cpu %.1f us/op, wall %.1f us/op\n",mode,lat[n/2],lat[n*99/100],c/n,wall/n);
  return 0;
}
